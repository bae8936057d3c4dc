{{/* Chart name. */}}
{{- define "seshn-segment.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "seshn-segment.fullname" -}}
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

{{- define "seshn-segment.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the chart. */}}
{{- define "seshn-segment.labels" -}}
helm.sh/chart: {{ include "seshn-segment.chart" . }}
{{ include "seshn-segment.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: seshn-segment
{{- end }}

{{/* Selector labels of the operator pod. */}}
{{- define "seshn-segment.selectorLabels" -}}
app.kubernetes.io/name: {{ include "seshn-segment.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "seshn-segment.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "seshn-segment.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository[:tag][@digest] from an image block, with fallbacks. Args: (list $image $fallbackRepo $fallbackTag) */}}
{{- define "seshn-segment.imageRef" -}}
{{- $img := index . 0 }}
{{- $repo := default (index . 1) $img.repository }}
{{- $tag := default (index . 2) $img.tag }}
{{- if $img.digest }}
{{- printf "%s@%s" $repo $img.digest }}
{{- else }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}
{{- end }}

{{- define "seshn-segment.image" -}}
{{- include "seshn-segment.imageRef" (list .Values.image .Values.image.repository (default .Chart.AppVersion .Values.image.tag)) }}
{{- end }}

{{/* The forwarder image defaults to the operator image: one image holds both binaries. */}}
{{- define "seshn-segment.forwarderImage" -}}
{{- $fallbackTag := default .Chart.AppVersion .Values.image.tag }}
{{- if and (not .Values.forwarderImage.repository) (not .Values.forwarderImage.tag) (not .Values.forwarderImage.digest) }}
{{- include "seshn-segment.image" . }}
{{- else }}
{{- include "seshn-segment.imageRef" (list .Values.forwarderImage .Values.image.repository $fallbackTag) }}
{{- end }}
{{- end }}

{{- define "seshn-segment.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{/* Label selector of the forwarder pods the operator creates (used by PodMonitor and docs). */}}
{{- define "seshn-segment.forwarderSelectorLabels" -}}
app.kubernetes.io/name: seshn-segment-forwarder
app.kubernetes.io/managed-by: seshn-segment-operator
{{- end }}
