{{/* The release's full name: the release name when it already contains the chart's name. */}}
{{- define "lvp.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "lvp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lvp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lvp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lvp.labels" -}}
{{ include "lvp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "lvp.serviceAccountName" -}}
{{- default (include "lvp.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* "Secure metrics": scrapers are authenticated and authorized by the API server. */}}
{{- define "lvp.secureMetrics" -}}
{{- if eq .Values.server.metricsAuth.mode "kubernetes" -}}true{{- end -}}
{{- end -}}

{{- define "lvp.metricsReaderName" -}}
{{- printf "%s-metrics-reader" (include "lvp.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Service's port name, which the ServiceMonitor scrapes. */}}
{{- define "lvp.portName" -}}
{{- if .Values.server.tls.enabled -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/*
The controller's settings (docs/configuration.md) and the environment variable each is read
from. Empty values are left out, so the controller's own default applies.
*/}}
{{- define "lvp.settingEnv" -}}
maxConcurrentJobs: LVP_MAX_CONCURRENT_JOBS
statusUpdateIntervalSeconds: LVP_STATUS_UPDATE_INTERVAL_SECONDS
cacheDir: LVP_CACHE_DIR
cacheMaxBytes: LVP_CACHE_MAX_BYTES
cacheMaxAgeHours: LVP_CACHE_MAX_AGE_HOURS
stateDir: LVP_STATE_DIR
fileTargetDir: LVP_FILE_TARGET_DIR
defaultVolumeGroup: LVP_DEFAULT_VOLUME_GROUP
lvmCommandPrefix: LVP_LVM_COMMAND_PREFIX
libvirtUri: LVP_LIBVIRT_URI
s3Endpoint: LVP_S3_ENDPOINT
s3Region: LVP_S3_REGION
downloadConnections: LVP_DOWNLOAD_CONNECTIONS
convertWhileDownloading: LVP_CONVERT_WHILE_DOWNLOADING
logLevel: LOG_LEVEL
logFormat: LOG_FORMAT
shutdownTimeoutSeconds: LVP_SHUTDOWN_TIMEOUT_SECONDS
workers: LVP_WORKERS
dependencyProbeIntervalSeconds: LVP_DEPENDENCY_PROBE_INTERVAL_SECONDS
{{- end -}}

{{/* Fails the render with a message a person can act on when values contradict each other. */}}
{{- define "lvp.validate" -}}
{{- if and .Values.server.tls.enabled (not .Values.server.tls.secretName) -}}
{{- fail "server.tls.enabled needs server.tls.secretName: a kubernetes.io/tls Secret with tls.crt and tls.key (and ca.crt for clientAuth)" -}}
{{- end -}}
{{- if and .Values.server.tls.clientAuth (not .Values.server.tls.enabled) -}}
{{- fail "server.tls.clientAuth (mTLS) needs server.tls.enabled=true" -}}
{{- end -}}
{{- if and (eq .Values.server.metricsAuth.mode "token") (not .Values.server.metricsAuth.tokenSecret.name) -}}
{{- fail "server.metricsAuth.mode=token needs server.metricsAuth.tokenSecret.name: a Secret holding the bearer token under tokenSecret.key" -}}
{{- end -}}
{{- if and .Values.fileTargets.enabled (not .Values.controller.fileTargetDir) -}}
{{- fail "fileTargets.enabled needs controller.fileTargetDir" -}}
{{- end -}}
{{- end -}}
