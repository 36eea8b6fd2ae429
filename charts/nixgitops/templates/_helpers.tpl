{{- define "nixgitops.name" -}}{{ .Chart.Name }}{{- end -}}
{{- define "nixgitops.fullname" -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "nixgitops.labels" -}}
app.kubernetes.io/name: {{ include "nixgitops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "nixgitops.selector" -}}
app.kubernetes.io/name: {{ include "nixgitops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
