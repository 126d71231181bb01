{{/*
The Deployment of one specd service (target, draft or orchestrator). The component templates
compute what differs (flags, Secret volumes, service account); everything else is shared here.
Takes a dict:
  root            the root context ($)
  name            component name: target | draft | orchestrator
  values          the component's values block
  args            the list of command-line flags (strings) after `specd COMMAND`
  volumes         extra Volume objects (Secrets) besides model cache, /tmp and values.extraVolumes
  mounts          extra VolumeMount objects matching volumes
  probeTls        true when the gRPC port speaks TLS (probes fall back to tcpSocket)
  replicas        replica count, or nil to leave it to an autoscaler
  serviceAccount  ServiceAccount name, or "" for the namespace default
  automountToken  mount the ServiceAccount's API token (only the orchestrator's discovery needs it)
*/}}
{{- define "specd.deployment" -}}
{{- $root := .root }}
{{- $v := .values }}
{{- $ctx := dict "root" $root "name" .name "values" $v }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "specd.componentName" $ctx }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "specd.labels" $ctx | nindent 4 }}
spec:
  {{- if not (kindIs "invalid" .replicas) }}
  replicas: {{ .replicas }}
  {{- end }}
  {{- with $v.updateStrategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "specd.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "specd.labels" $ctx | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with include "specd.podAnnotations" $ctx }}
      annotations:
        {{- . | nindent 8 }}
      {{- end }}
    spec:
      {{- with .serviceAccount }}
      serviceAccountName: {{ . }}
      {{- end }}
      automountServiceAccountToken: {{ .automountToken | default false }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      securityContext:
        {{- include "specd.podSecurityContext" $ctx | nindent 8 }}
      containers:
        - name: {{ .name }}
          image: {{ include "specd.image" (dict "root" $root "image" $v.image) }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          args:
            {{- range .args }}
            - {{ . | toString | quote }}
            {{- end }}
            {{- range $v.extraArgs }}
            - {{ . | quote }}
            {{- end }}
          ports:
            {{- include "specd.containerPorts" (dict "root" $root "port" $v.port) | nindent 12 }}
          env:
            {{- include "specd.commonEnv" $root | nindent 12 }}
            {{- with $v.env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- with include "specd.grpcProbes" (dict "values" $v "tls" .probeTls) | trim }}
          {{- . | nindent 10 }}
          {{- end }}
          resources:
            {{- include "specd.resources" $v | nindent 12 }}
          securityContext:
            {{- include "specd.securityContext" $ctx | nindent 12 }}
          volumeMounts:
            {{- include "specd.commonVolumeMounts" $root | nindent 12 }}
            {{- with .mounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with $v.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "specd.commonVolumes" $root | nindent 8 }}
        {{- with .volumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with $v.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
