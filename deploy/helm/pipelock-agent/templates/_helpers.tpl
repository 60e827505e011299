{{/* Names and labels shared by the templates. */}}
{{- define "pipelock-agent.name" -}}
{{- .Chart.Name -}}
{{- end -}}

{{- define "pipelock-agent.labels" -}}
app.kubernetes.io/name: {{ include "pipelock-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pipelock-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pipelock-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The Secret holding the shared CA (tls.crt, tls.key). */}}
{{- define "pipelock-agent.caSecret" -}}
{{- if .Values.ca.existingSecret -}}
{{- .Values.ca.existingSecret -}}
{{- else if and .Values.ca.cert .Values.ca.key -}}
{{- printf "%s-ca" .Release.Name -}}
{{- else -}}
{{- fail "pipelock-agent: set ca.cert and ca.key (--set-file), or ca.existingSecret: every node must use the same CA" -}}
{{- end -}}
{{- end -}}
