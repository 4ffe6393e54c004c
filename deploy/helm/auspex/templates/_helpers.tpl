{{/* Names, labels and the agent's config file, shared by the templates. */}}

{{- define "auspex.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release name, or release-chart when the release name does not say auspex. */}}
{{- define "auspex.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "auspex.selectorLabels" -}}
app.kubernetes.io/name: {{ include "auspex.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "auspex.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "auspex.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "auspex.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "auspex.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "auspex.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* address:port, with brackets around an IPv6 address. */}}
{{- define "auspex.hostPort" -}}
{{- if contains ":" .address }}
{{- printf "[%s]:%v" .address .port }}
{{- else }}
{{- printf "%s:%v" .address .port }}
{{- end }}
{{- end }}

{{/*
Host files are mounted below /host at their host path, so that what the
agent reports (/status names its BTF file) maps to the node's own path.
*/}}
{{- define "auspex.kernelBtfPath" -}}
{{- printf "/host%s" .Values.btf.kernel.hostPath }}
{{- end }}

{{- define "auspex.btfFilePath" -}}
{{- printf "/host%s" .Values.btf.file.hostPath }}
{{- end }}

{{/*
The agent's config file: values.config, plus the keys the chart owns. The
agent reads the kernel's BTF at kernel_btf, which is the host's file mounted
read-only with btf.source=kernel and absent otherwise: then the agent treats
the kernel as having no BTF (a container's own /sys may show one) and auto
falls back.
*/}}
{{- define "auspex.agentConfig" -}}
{{- $c := deepCopy .Values.config }}
{{- $_ := set $c "method" .Values.collectionMethod }}
{{- $_ := set $c "kernel_btf" (include "auspex.kernelBtfPath" .) }}
{{- if eq .Values.btf.source "file" }}
{{- $_ := set $c "btf" (include "auspex.btfFilePath" .) }}
{{- end }}
{{- $_ := set $c "listen" (include "auspex.hostPort" (dict "address" (default "0.0.0.0" .Values.http.address) "port" .Values.http.port)) }}
{{- if .Values.grpc.enabled }}
{{- $_ := set $c "grpc_listen" (include "auspex.hostPort" (dict "address" (default "0.0.0.0" .Values.grpc.address) "port" .Values.grpc.port)) }}
{{- else }}
{{- $_ := set $c "grpc_listen" "off" }}
{{- end }}
{{- if .Values.tls.secretName }}
{{- $_ := set $c "http_tls_cert" "/etc/auspex-tls/tls.crt" }}
{{- $_ := set $c "http_tls_key" "/etc/auspex-tls/tls.key" }}
{{- if .Values.grpc.enabled }}
{{- $_ := set $c "grpc_tls_cert" "/etc/auspex-tls/tls.crt" }}
{{- $_ := set $c "grpc_tls_key" "/etc/auspex-tls/tls.key" }}
{{- if .Values.tls.grpcClientCA }}
{{- $_ := set $c "grpc_tls_client_ca" "/etc/auspex-tls/ca.crt" }}
{{- end }}
{{- end }}
{{- else }}
{{- /* /status and /metrics carry no event data: clear text is the default. */}}
{{- $_ := set $c "http_insecure" true }}
{{- if .Values.grpc.enabled }}
{{- /* The stream carries every process's arguments: only when asked. */}}
{{- if not .Values.grpc.insecure }}
{{- fail "grpc.enabled without tls.secretName would stream every process's arguments in clear text on every node address: set tls.secretName, or grpc.insecure: true to accept that" }}
{{- end }}
{{- $_ := set $c "grpc_insecure" true }}
{{- end }}
{{- end }}
{{- $_ := set $c "termination_log" .Values.terminationMessagePath }}
{{- toYaml $c }}
{{- end }}
