{{/*
Names, labels and the pieces every component's pod shares. Helpers that need more than the
root context take a dict: (dict "root" $ "name" "target" "values" .Values.targetService).
*/}}

{{- define "specd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* RELEASE-specd, or RELEASE when it already contains the chart name; at most 50 characters so
that "-orchestrator" still fits in 63. */}}
{{- define "specd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The name of one component's resources: FULLNAME-COMPONENT. Takes (dict "root" $ "name" NAME). */}}
{{- define "specd.componentName" -}}
{{- printf "%s-%s" (include "specd.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "specd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component. Takes (dict "root" $ "name" NAME). */}}
{{- define "specd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "specd.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/* All labels of one component's resources. Takes (dict "root" $ "name" NAME). */}}
{{- define "specd.labels" -}}
helm.sh/chart: {{ include "specd.chart" .root }}
{{ include "specd.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: specd
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* REPOSITORY:TAG of an image block; the tag defaults to the chart's appVersion.
Takes (dict "root" $ "image" IMAGE). */}}
{{- define "specd.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion | toString) }}
{{- end }}

{{/* The top-level securityContexts with a component's own top-level keys replacing theirs (a
plain `set`, not mergeOverwrite, which would ignore false and 0). Takes (dict "root" $ "values" VALUES). */}}
{{- define "specd.podSecurityContext" -}}
{{- $out := deepCopy .root.Values.podSecurityContext }}
{{- range $key, $value := .values.podSecurityContext }}
{{- $_ := set $out $key $value }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{- define "specd.securityContext" -}}
{{- $out := deepCopy .root.Values.securityContext }}
{{- range $key, $value := .values.securityContext }}
{{- $_ := set $out $key $value }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* Container resources plus the GPU request of gpu.* (an extended resource: requests = limits).
Takes the component's values (the orchestrator has no gpu block). */}}
{{- define "specd.resources" -}}
{{- $res := deepCopy (.resources | default dict) }}
{{- $gpuValues := .gpu | default dict }}
{{- if $gpuValues.enabled }}
{{- $gpu := dict $gpuValues.resourceName ($gpuValues.count | int) }}
{{- $_ := set $res "limits" (mergeOverwrite (get $res "limits" | default dict) $gpu) }}
{{- $_ := set $res "requests" (mergeOverwrite (get $res "requests" | default dict) (deepCopy $gpu)) }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/* startupProbe, livenessProbe and readinessProbe on the "grpc" port: the kubelet's native gRPC
health probe (grpc.health.v1, service ""), or tcpSocket when TLS is on (the kubelet's gRPC
probe speaks plaintext only). Takes (dict "root" $ "values" VALUES "tls" BOOL). */}}
{{- define "specd.grpcProbes" -}}
{{- $values := .values }}
{{- $tls := .tls }}
{{- $out := list }}
{{- range $kind := list "startup" "liveness" "readiness" }}
{{- $p := index $values.probes $kind }}
{{- if $p.enabled }}
{{- $probe := include "specd.grpcProbe" (dict "port" $values.port "tls" $tls "probe" $p) | fromYaml }}
{{- $out = append $out (dict (printf "%sProbe" $kind) $probe) }}
{{- end }}
{{- end }}
{{- range $out }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* One probe. Takes (dict "port" PORT "tls" BOOL "probe" PROBE_VALUES). */}}
{{- define "specd.grpcProbe" -}}
{{- $p := .probe }}
{{- if .tls }}
tcpSocket:
  port: grpc
{{- else }}
grpc:
  port: {{ .port }}
{{- end }}
initialDelaySeconds: {{ $p.initialDelaySeconds }}
periodSeconds: {{ $p.periodSeconds }}
timeoutSeconds: {{ $p.timeoutSeconds }}
failureThreshold: {{ $p.failureThreshold }}
{{- end }}

{{/* Pod annotations: prometheus.io/* when metrics are on, then the component's own. Takes
(dict "root" $ "values" VALUES). */}}
{{- define "specd.podAnnotations" -}}
{{- $ann := dict }}
{{- if and .root.Values.metrics.enabled .root.Values.metrics.podAnnotations }}
{{- $_ := set $ann "prometheus.io/scrape" "true" }}
{{- $_ := set $ann "prometheus.io/port" (.root.Values.metrics.port | toString) }}
{{- $_ := set $ann "prometheus.io/path" "/metrics" }}
{{- end }}
{{- range $key, $value := .values.podAnnotations }}
{{- $_ := set $ann $key $value }}
{{- end }}
{{- if $ann }}
{{- toYaml $ann }}
{{- end }}
{{- end }}

{{/* Container ports: "grpc" and, with metrics on, "metrics". Takes (dict "root" $ "port" PORT). */}}
{{- define "specd.containerPorts" -}}
- name: grpc
  containerPort: {{ .port }}
  protocol: TCP
{{- if .root.Values.metrics.enabled }}
- name: metrics
  containerPort: {{ .root.Values.metrics.port }}
  protocol: TCP
{{- end }}
{{- end }}

{{/* Service ports: "grpc" and, with metrics on, "metrics". Takes (dict "root" $ "port" PORT). */}}
{{- define "specd.servicePorts" -}}
- name: grpc
  port: {{ .port }}
  targetPort: grpc
  protocol: TCP
  appProtocol: grpc
{{- if .root.Values.metrics.enabled }}
- name: metrics
  port: {{ .root.Values.metrics.port }}
  targetPort: metrics
  protocol: TCP
  appProtocol: http
{{- end }}
{{- end }}

{{/* Environment shared by target, draft and orchestrator: caches on the writable volumes. */}}
{{- define "specd.commonEnv" -}}
- name: SPECD_CACHE
  value: {{ .Values.modelCache.mountPath | quote }}
- name: HF_HOME
  value: {{ printf "%s/hf" .Values.modelCache.mountPath | quote }}
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: PYTHONUNBUFFERED
  value: "1"
{{- end }}

{{/* Volumes shared by target, draft and orchestrator pods: the model cache and /tmp. */}}
{{- define "specd.commonVolumes" -}}
- name: model-cache
  {{- if .Values.modelCache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.modelCache.existingClaim }}
  {{- else }}
  emptyDir:
    {{- with .Values.modelCache.medium }}
    medium: {{ . }}
    {{- end }}
    sizeLimit: {{ .Values.modelCache.sizeLimit }}
  {{- end }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpDir.sizeLimit }}
{{- end }}

{{- define "specd.commonVolumeMounts" -}}
- name: model-cache
  mountPath: {{ .Values.modelCache.mountPath }}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* A Secret volume (read-only files). Takes (dict "name" VOLUME "secret" SECRET "items" ITEMS-or-nil). */}}
{{- define "specd.secretVolume" -}}
name: {{ .name }}
secret:
  secretName: {{ .secret }}
  defaultMode: 288
  {{- with .items }}
  items:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* The mutual-TLS flags of target and draft services (server side). */}}
{{- define "specd.serverTlsArgs" -}}
{{- $d := .Values.tls.mountPath }}
{{- toYaml (list "--tls-cert" (printf "%s/tls.crt" $d) "--tls-key" (printf "%s/tls.key" $d) "--tls-client-ca" (printf "%s/ca.crt" $d)) }}
{{- end }}

{{/* Phrase store: the URL passed to the drafters ("" when the pool is embedded). */}}
{{- define "specd.phraseStoreUrl" -}}
{{- $ps := .Values.phraseStore }}
{{- if $ps.enabled }}
{{- if eq $ps.mode "external" }}
{{- $ps.external.url }}
{{- else }}
{{- printf "redis://%s:%d/%d" (include "specd.componentName" (dict "root" . "name" "redis")) ($ps.internal.port | int) ($ps.db | int) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Phrase store password Secret name ("" when there is none) and its key. */}}
{{- define "specd.phraseStoreSecret" -}}
{{- $ps := .Values.phraseStore }}
{{- if $ps.enabled }}
{{- if eq $ps.mode "external" }}
{{- $ps.external.existingSecret }}
{{- else }}
{{- $ps.internal.auth.existingSecret }}
{{- end }}
{{- end }}
{{- end }}

{{- define "specd.phraseStoreSecretKey" -}}
{{- if eq .Values.phraseStore.mode "external" }}
{{- .Values.phraseStore.external.existingSecretKey }}
{{- else }}
{{- .Values.phraseStore.internal.auth.existingSecretKey }}
{{- end }}
{{- end }}

{{/* Where the Redis password file is mounted in the drafters. */}}
{{- define "specd.phraseStorePasswordDir" -}}
/etc/specd/redis
{{- end }}

{{/* The orchestrator's --target-address and --draft-address. */}}
{{- define "specd.targetAddress" -}}
{{- if .Values.orchestrator.targetAddress }}
{{- .Values.orchestrator.targetAddress }}
{{- else }}
{{- printf "%s:%d" (include "specd.componentName" (dict "root" . "name" "target")) (.Values.targetService.port | int) }}
{{- end }}
{{- end }}

{{- define "specd.draftAddress" -}}
{{- if .Values.orchestrator.draftAddress }}
{{- .Values.orchestrator.draftAddress }}
{{- else if .Values.draftService.enabled }}
{{- printf "k8s:%s/%s:grpc" .Release.Namespace (include "specd.componentName" (dict "root" . "name" "draft")) }}
{{- else }}
{{- "none" }}
{{- end }}
{{- end }}

{{/* True (non-empty) when the orchestrator discovers drafters through EndpointSlices. */}}
{{- define "specd.usesK8sDiscovery" -}}
{{- if hasPrefix "k8s:" (include "specd.draftAddress" .) }}true{{ end }}
{{- end }}

{{- define "specd.orchestratorServiceAccountName" -}}
{{- if .Values.orchestrator.serviceAccount.create }}
{{- default (include "specd.componentName" (dict "root" . "name" "orchestrator")) .Values.orchestrator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.orchestrator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Checks across values that the JSON schema cannot express; called by every template. */}}
{{- define "specd.validate" -}}
{{- $v := .Values }}
{{- if and $v.tls.enabled (not $v.tls.existingSecret) }}
{{- fail "tls.enabled needs tls.existingSecret (a Secret with tls.crt, tls.key and ca.crt)" }}
{{- end }}
{{- if and $v.orchestrator.serverTls.enabled (not (or $v.orchestrator.serverTls.existingSecret $v.tls.existingSecret)) }}
{{- fail "orchestrator.serverTls.enabled needs orchestrator.serverTls.existingSecret or tls.existingSecret" }}
{{- end }}
{{- if and $v.orchestrator.enabled (not $v.targetService.enabled) (not $v.orchestrator.targetAddress) }}
{{- fail "targetService.enabled is false: set orchestrator.targetAddress to the target service the orchestrator should call" }}
{{- end }}
{{- if and $v.phraseStore.enabled (eq $v.phraseStore.mode "external") (not $v.phraseStore.external.url) }}
{{- fail "phraseStore.mode is external: set phraseStore.external.url (redis://HOST:PORT/DB or rediss://...)" }}
{{- end }}
{{- if and $v.phraseStore.enabled (eq $v.phraseStore.mode "external") (regexMatch "^rediss?://[^/@]*:[^/@]*@" $v.phraseStore.external.url) }}
{{- fail "phraseStore.external.url carries a password: put it in a Secret and name it in phraseStore.external.existingSecret" }}
{{- end }}
{{- $as := $v.draftService.autoscaling }}
{{- if and $v.draftService.enabled $as.enabled }}
{{- if gt ($as.minReplicas | int) ($as.maxReplicas | int) }}
{{- fail (printf "draftService.autoscaling.minReplicas (%d) is greater than maxReplicas (%d)" ($as.minReplicas | int) ($as.maxReplicas | int)) }}
{{- end }}
{{- if and (eq ($as.targetCPUUtilizationPercentage | int) 0) (not $as.metrics) }}
{{- fail "draftService.autoscaling has no metric: set targetCPUUtilizationPercentage or give autoscaling.metrics" }}
{{- end }}
{{- end }}
{{- end }}
