{{/*
TLS files from Secrets (values `tls`), mounted read-only under
/etc/ordermesh/tls/<name>/ and named by the variables the binaries read.
Argument: (dict "root" $ "server" <bool> "amqp" <bool>): `server` for the
gRPC services' listeners, `amqp` for components that talk to RabbitMQ;
PostgreSQL's CA goes to every container that gets one of these.
*/}}
{{- define "ordermesh.tlsDir" -}}/etc/ordermesh/tls{{- end }}

{{/* "true" when order-svc and processor-svc listen with TLS. */}}
{{- define "ordermesh.serverTls" -}}
{{- if .Values.tls.server.secretName }}true{{ end }}
{{- end }}

{{- define "ordermesh.tlsEnv" -}}
{{- $t := .root.Values.tls -}}
{{- $dir := include "ordermesh.tlsDir" .root -}}
{{- if and .server $t.server.secretName }}
- name: TLS_CERT_FILE
  value: {{ printf "%s/server/%s" $dir $t.server.certKey | quote }}
- name: TLS_KEY_FILE
  value: {{ printf "%s/server/%s" $dir $t.server.keyKey | quote }}
{{- end }}
{{- if $t.postgresqlCa.secretName }}
- name: PG_CA_FILE
  value: {{ printf "%s/postgresql/%s" $dir $t.postgresqlCa.key | quote }}
{{- end }}
{{- if and .amqp $t.rabbitmqCa.secretName }}
- name: AMQP_CA_FILE
  value: {{ printf "%s/rabbitmq/%s" $dir $t.rabbitmqCa.key | quote }}
{{- end }}
{{- end }}

{{- define "ordermesh.tlsVolumeMounts" -}}
{{- $t := .root.Values.tls -}}
{{- $dir := include "ordermesh.tlsDir" .root -}}
{{- if and .server $t.server.secretName }}
- name: tls-server
  mountPath: {{ $dir }}/server
  readOnly: true
{{- end }}
{{- if $t.postgresqlCa.secretName }}
- name: tls-postgresql-ca
  mountPath: {{ $dir }}/postgresql
  readOnly: true
{{- end }}
{{- if and .amqp $t.rabbitmqCa.secretName }}
- name: tls-rabbitmq-ca
  mountPath: {{ $dir }}/rabbitmq
  readOnly: true
{{- end }}
{{- end }}

{{- define "ordermesh.tlsVolumes" -}}
{{- $t := .root.Values.tls -}}
{{- if and .server $t.server.secretName }}
- name: tls-server
  secret:
    secretName: {{ $t.server.secretName }}
    # 0440: the key is readable by the pod's fsGroup (65532) only.
    defaultMode: 288
    items:
      - key: {{ $t.server.certKey }}
        path: {{ $t.server.certKey }}
      - key: {{ $t.server.keyKey }}
        path: {{ $t.server.keyKey }}
      {{- with $t.server.caKey }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- end }}
{{- if $t.postgresqlCa.secretName }}
- name: tls-postgresql-ca
  secret:
    secretName: {{ $t.postgresqlCa.secretName }}
    defaultMode: 292
    items:
      - key: {{ $t.postgresqlCa.key }}
        path: {{ $t.postgresqlCa.key }}
{{- end }}
{{- if and .amqp $t.rabbitmqCa.secretName }}
- name: tls-rabbitmq-ca
  secret:
    secretName: {{ $t.rabbitmqCa.secretName }}
    defaultMode: 292
    items:
      - key: {{ $t.rabbitmqCa.key }}
        path: {{ $t.rabbitmqCa.key }}
{{- end }}
{{- end }}
