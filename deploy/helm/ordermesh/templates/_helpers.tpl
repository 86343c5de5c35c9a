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
The three components: values key, name, binary, port, which connection
URLs each one gets, whether it verifies bearer tokens (auth) and signs them
(signs). Returned as YAML; use with fromYaml.
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
  auth: true
  signs: false
processorSvc:
  name: processor-svc
  binary: /usr/local/bin/processor-svc
  args: [serve]
  portName: grpc
  port: {{ .Values.processorSvc.port }}
  probe: grpc
  urls: [processor, amqp]
  auth: true
  signs: true
relay:
  name: relay
  binary: /usr/local/bin/relay
  args: []
  portName: admin
  port: {{ .Values.relay.adminPort }}
  probe: http
  urls: [orders, processor, amqp]
  auth: false
  signs: false
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

{{/* Secret the chart creates for auth.jwtSecret (without auth.existingSecret). */}}
{{- define "ordermesh.authSecretName" -}}
{{ include "ordermesh.fullname" . }}-auth
{{- end }}

{{/* "true" when an HS256 secret is configured (auth.existingSecret or auth.jwtSecret). */}}
{{- define "ordermesh.authHs256" -}}
{{- if or .Values.auth.existingSecret .Values.auth.jwtSecret }}true{{ end }}
{{- end }}

{{/* "true" when the chart creates the auth Secret. */}}
{{- define "ordermesh.createsAuthSecret" -}}
{{- if and (not .Values.auth.existingSecret) .Values.auth.jwtSecret }}true{{ end }}
{{- end }}

{{- define "ordermesh.authKeysDir" -}}/etc/ordermesh/auth/keys{{- end }}
{{- define "ordermesh.authSigningDir" -}}/etc/ordermesh/auth/signing{{- end }}

{{/*
Fails the render unless the services can start: a verification key, and a
way for processor-svc to sign the tokens it issues.
*/}}
{{- define "ordermesh.validateAuth" -}}
{{- $a := .Values.auth -}}
{{- $asym := or $a.publicKeys $a.jwksKey -}}
{{- if and $a.publicKeysSecret (not $asym) }}
{{- fail "auth.publicKeysSecret is set but names no key: list its PEM public keys in auth.publicKeys and/or its JWKS document in auth.jwksKey" }}
{{- end }}
{{- if and $asym (not $a.publicKeysSecret) }}
{{- fail "auth.publicKeys / auth.jwksKey name keys of a Secret: set auth.publicKeysSecret to that Secret's name" }}
{{- end }}
{{- if not (or (include "ordermesh.authHs256" .) $asym $a.jwksUrl) }}
{{- fail "order-svc and processor-svc need a bearer-token verification key, and the chart does not make one up: set auth.jwtSecret (HS256, at least 32 bytes, e.g. --set auth.jwtSecret=\"$(openssl rand -hex 32)\"), or auth.existingSecret (a Secret you manage with the secret under auth.existingSecretKey, default jwt-secret), or auth.publicKeysSecret with auth.publicKeys / auth.jwksKey (RS256/EdDSA, plus auth.signingKeySecret), or auth.jwksUrl (an identity provider's JWKS endpoint)" }}
{{- end }}
{{- if not (or (include "ordermesh.authHs256" .) $a.signingKeySecret) }}
{{- fail "processor-svc signs the tokens it issues with auth.signingKeySecret (a PEM private key) or, without it, with the HS256 secret: set auth.signingKeySecret, auth.jwtSecret or auth.existingSecret" }}
{{- end }}
{{- end }}

{{/*
Auth environment of one component: (dict "root" $ "component" <components entry>).
The HS256 secret comes from a Secret (secretKeyRef), never from a ConfigMap.
*/}}
{{- define "ordermesh.authEnv" -}}
{{- $a := .root.Values.auth -}}
{{- if include "ordermesh.authHs256" .root }}
- name: AUTH_JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $a.existingSecret | default (include "ordermesh.authSecretName" .root) }}
      key: {{ ternary $a.existingSecretKey "jwt-secret" (ne $a.existingSecret "") }}
{{- end }}
{{- if $a.publicKeys }}
{{- $dir := include "ordermesh.authKeysDir" .root }}
{{- $paths := list }}
{{- range $a.publicKeys }}
{{- $paths = append $paths (printf "%s/%s" $dir .) }}
{{- end }}
- name: AUTH_JWT_PUBLIC_KEYS
  value: {{ join "," $paths | quote }}
{{- end }}
{{- if $a.jwksKey }}
- name: AUTH_JWKS_FILE
  value: {{ printf "%s/%s" (include "ordermesh.authKeysDir" .root) $a.jwksKey | quote }}
{{- end }}
{{- if and .component.signs $a.signingKeySecret }}
- name: AUTH_JWT_SIGNING_KEY_FILE
  value: {{ printf "%s/%s" (include "ordermesh.authSigningDir" .root) $a.signingKeySecretKey | quote }}
{{- end }}
{{- end }}

{{/* Key volume mounts of one component (same argument as authEnv); may be empty. */}}
{{- define "ordermesh.authVolumeMounts" -}}
{{- $a := .root.Values.auth -}}
{{- if $a.publicKeysSecret }}
- name: auth-keys
  mountPath: {{ include "ordermesh.authKeysDir" .root }}
  readOnly: true
{{- end }}
{{- if and .component.signs $a.signingKeySecret }}
- name: auth-signing-key
  mountPath: {{ include "ordermesh.authSigningDir" .root }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Key volumes of one component (same argument as authEnv); may be empty. */}}
{{- define "ordermesh.authVolumes" -}}
{{- $a := .root.Values.auth -}}
{{- if $a.publicKeysSecret }}
- name: auth-keys
  secret:
    secretName: {{ $a.publicKeysSecret }}
    # 0444: public keys.
    defaultMode: 292
    items:
      {{- range $a.publicKeys }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
      {{- with $a.jwksKey }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- end }}
{{- if and .component.signs $a.signingKeySecret }}
- name: auth-signing-key
  secret:
    secretName: {{ $a.signingKeySecret }}
    # 0440: readable by the pod's fsGroup (65532), not by others.
    defaultMode: 288
    items:
      - key: {{ $a.signingKeySecretKey }}
        path: {{ $a.signingKeySecretKey }}
{{- end }}
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
