{{/* Chart name, overridable. */}}
{{- define "best.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: release name, plus the chart name unless the release contains it. */}}
{{- define "best.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "best.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release, whatever its component. */}}
{{- define "best.commonLabels" -}}
helm.sh/chart: {{ include "best.chart" . }}
app.kubernetes.io/name: {{ include "best.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of the gateway's objects. */}}
{{- define "best.labels" -}}
{{ include "best.commonLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* Labels of the in-chart Redis objects. */}}
{{- define "best.redis.labels" -}}
{{ include "best.commonLabels" . }}
app.kubernetes.io/component: redis
{{- end }}

{{/* Labels selecting the gateway pods (immutable in a Deployment: keep them minimal). */}}
{{- define "best.selectorLabels" -}}
app.kubernetes.io/name: {{ include "best.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "best.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "best.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "best.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "best.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Secret holding provider keys and tokens: the user's, or the one this chart creates. */}}
{{- define "best.secretName" -}}
{{- default (include "best.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{/* REDIS_URL: the in-chart Redis, else the external URL, else empty (embedded store). */}}
{{- define "best.redisUrl" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s-redis:6379/0" (include "best.fullname" .) }}
{{- else }}
{{- .Values.redis.url }}
{{- end }}
{{- end }}
