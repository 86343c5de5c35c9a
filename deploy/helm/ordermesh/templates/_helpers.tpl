{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "ordermesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release full name; component names are appended to it, so keep room. */}}
{{- define "ordermesh.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ordermesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ordermesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ordermesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ordermesh.labels" -}}
helm.sh/chart: {{ include "ordermesh.chart" . }}
{{ include "ordermesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ordermesh
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component: (dict "root" $ "component" "order-svc") */}}
{{- define "ordermesh.componentLabels" -}}
{{ include "ordermesh.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "ordermesh.componentSelectorLabels" -}}
{{ include "ordermesh.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The three components: values key, name, binary, port, and which connection
URLs each one gets. Returned as YAML; use with fromYaml.
*/}}
{{- define "ordermesh.components" -}}
orderSvc:
  name: order-svc
  binary: /usr/local/bin/order-svc
  args: [serve]
  portName: grpc
  port: {{ .Values.orderSvc.port }}
  probe: grpc
  urls: [orders, amqp]
processorSvc:
  name: processor-svc
  binary: /usr/local/bin/processor-svc
  args: [serve]
  portName: grpc
  port: {{ .Values.processorSvc.port }}
  probe: grpc
  urls: [processor, amqp]
relay:
  name: relay
  binary: /usr/local/bin/relay
  args: []
  portName: admin
  port: {{ .Values.relay.adminPort }}
  probe: http
  urls: [orders, processor, amqp]
{{- end }}

{{- define "ordermesh.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{- define "ordermesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ordermesh.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ordermesh.configMapName" -}}
{{ include "ordermesh.fullname" . }}-config
{{- end }}

{{/* Secret the chart creates for connection URLs not taken from existing secrets. */}}
{{- define "ordermesh.secretName" -}}
{{ include "ordermesh.fullname" . }}-connections
{{- end }}

{{/* The same URLs for the migration hook, which runs before release objects exist. */}}
{{- define "ordermesh.migrationsSecretName" -}}
{{ include "ordermesh.fullname" . }}-migrations
{{- end }}

{{- define "ordermesh.postgresUrl" -}}
{{- $pg := .root.Values.postgresql -}}
postgres://{{ $pg.username | urlquery }}{{ if $pg.password }}:{{ $pg.password | urlquery }}{{ end }}@{{ $pg.host }}:{{ $pg.port }}/{{ .database }}{{ if $pg.params }}?{{ $pg.params }}{{ end }}
{{- end }}

{{- define "ordermesh.amqpUrl" -}}
{{- $mq := .Values.rabbitmq -}}
{{ $mq.scheme }}://{{ $mq.username | urlquery }}:{{ $mq.password | urlquery }}@{{ $mq.host }}:{{ $mq.port }}/{{ $mq.vhost | urlquery }}
{{- end }}

{{/* data: of a Secret with the URLs the chart manages (used twice: release and hook). */}}
{{- define "ordermesh.secretData" -}}
{{- if not .Values.postgresql.existingSecret }}
order-database-url: {{ include "ordermesh.postgresUrl" (dict "root" . "database" .Values.postgresql.ordersDatabase) | b64enc | quote }}
processor-database-url: {{ include "ordermesh.postgresUrl" (dict "root" . "database" .Values.postgresql.processorDatabase) | b64enc | quote }}
{{- end }}
{{- if not .Values.rabbitmq.existingSecret }}
amqp-url: {{ include "ordermesh.amqpUrl" . | b64enc | quote }}
{{- end }}
{{- end }}

{{- define "ordermesh.createsSecret" -}}
{{- if or (not .Values.postgresql.existingSecret) (not .Values.rabbitmq.existingSecret) }}true{{ end }}
{{- end }}

{{/*
EnvVar for one connection URL: (dict "root" $ "url" "orders" "secret" <name of chart secret>)
*/}}
{{- define "ordermesh.urlEnv" -}}
{{- $v := .root.Values -}}
{{- if eq .url "orders" }}
- name: ORDER_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.postgresql.existingSecret | default .secret }}
      key: {{ ternary $v.postgresql.existingSecretKeys.ordersUrl "order-database-url" (ne $v.postgresql.existingSecret "") }}
{{- else if eq .url "processor" }}
- name: PROCESSOR_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.postgresql.existingSecret | default .secret }}
      key: {{ ternary $v.postgresql.existingSecretKeys.processorUrl "processor-database-url" (ne $v.postgresql.existingSecret "") }}
{{- else if eq .url "amqp" }}
- name: AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.rabbitmq.existingSecret | default .secret }}
      key: {{ ternary $v.rabbitmq.existingSecretKey "amqp-url" (ne $v.rabbitmq.existingSecret "") }}
{{- end }}
{{- end }}

{{/* Environment every ordermesh container gets besides the ConfigMap. */}}
{{- define "ordermesh.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_SERVICE_NAME
  value: {{ .component | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE),service.version=%s%s" .root.Chart.AppVersion (ternary (printf ",%s" .root.Values.otel.resourceAttributes) "" (ne .root.Values.otel.resourceAttributes "")) | quote }}
{{- end }}

{{- define "ordermesh.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "ordermesh.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}
