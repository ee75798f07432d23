{{/* Names, labels and the image reference shared by the templates. */}}

{{- define "s3files.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "s3files.labels" -}}
app.kubernetes.io/name: {{ include "s3files.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component: controller, node, emulator, object-store. */}}
{{- define "s3files.selector" -}}
app.kubernetes.io/name: {{ include "s3files.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "s3files.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The S3 Files API endpoint the driver uses: the local emulator, or the configured one. */}}
{{- define "s3files.endpoint" -}}
{{- if .Values.local.enabled -}}
http://{{ .Release.Name }}-emulator.{{ .Release.Namespace }}.svc:9559
{{- else -}}
{{ .Values.s3filesEndpoint }}
{{- end -}}
{{- end -}}

{{/* Environment every driver container gets. */}}
{{- define "s3files.env" -}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- with .Values.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- with (include "s3files.endpoint" .) }}
- name: AWS_ENDPOINT_URL_S3FILES
  value: {{ . | quote }}
{{- end }}
{{- if .Values.local.enabled }}
{{- if not .Values.region }}
- name: AWS_REGION
  value: us-east-1
{{- end }}
# The emulator and the local object store accept any credentials.
- name: AWS_ACCESS_KEY_ID
  value: local
- name: AWS_SECRET_ACCESS_KEY
  value: local
- name: AWS_EC2_METADATA_DISABLED
  value: "true"
{{- end }}
{{- end -}}

{{/* An INI document from a map of sections to maps of keys to values, sorted. */}}
{{- define "s3files.ini" -}}
{{- range $section, $keys := . }}
[{{ $section }}]
{{- range $key, $value := $keys }}
{{- /* YAML numbers arrive as floats: 33554432 must not become 3.3554432e+07. */}}
{{- if and (kindIs "float64" $value) (eq ($value | int64 | float64) $value) }}
{{ $key }} = {{ $value | int64 }}
{{- else }}
{{ $key }} = {{ $value }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A memory quantity (e.g. 2Gi, 1536Mi, 2G, or bytes) in MiB; empty when it has another form. */}}
{{- define "s3files.mebibytes" -}}
{{- $q := toString . -}}
{{- if hasSuffix "Gi" $q -}}{{ mul (trimSuffix "Gi" $q | int) 1024 }}
{{- else if hasSuffix "Mi" $q -}}{{ trimSuffix "Mi" $q | int }}
{{- else if hasSuffix "G" $q -}}{{ div (mul (trimSuffix "G" $q | int) 1000000000) 1048576 }}
{{- else if hasSuffix "M" $q -}}{{ div (mul (trimSuffix "M" $q | int) 1000000) 1048576 }}
{{- else if regexMatch "^[0-9]+$" $q -}}{{ div ($q | int64) 1048576 }}
{{- end -}}
{{- end -}}
