{{/*
The draft and verifier pools: one GPU Deployment each, on its own node pool. Call with
(dict "root" $ "component" "draft") or "verifier".
*/}}
{{- define "specdec.engine.deployment" -}}
{{- $root := .root }}
{{- $values := index $root.Values .component }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "specdec.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "specdec.labels" . | nindent 4 }}
spec:
  replicas: {{ $values.replicas }}
  selector:
    matchLabels:
      {{- include "specdec.selectorLabels" . | nindent 6 }}
  template:
    {{- include "specdec.engine.podTemplate" . | nindent 4 }}
{{- end }}

{{/*
The pod template of a pool's pods. Call with (dict "root" $ "component" "verifier"), adding
"tpArgs" (a list: the tensor-parallel flags of one LeaderWorkerSet role) and "worker" true for
an LWS worker pod, which serves no gRPC (it runs ranks only: no service ports, no gRPC probes).
*/}}
{{- define "specdec.engine.podTemplate" -}}
{{- $root := .root }}
{{- $values := index $root.Values .component }}
{{- $modelDir := ternary $root.Values.models.target $root.Values.models.draft (eq .component "verifier") }}
{{- $tp := int (default 1 $values.tensorParallel) }}
{{- $worker := default false .worker }}
{{- $labels := dict "root" $root "component" (ternary (printf "%s-worker" .component) .component $worker) }}
{{- $resources := deepCopy $values.resources }}
{{- if and (eq .component "verifier") (hasPrefix "cuda" $values.device) (gt $tp 1) }}
{{- $limits := deepCopy (default (dict) $resources.limits) }}
{{- $_ := set $limits "nvidia.com/gpu" $tp }}
{{- $_ := set $resources "limits" $limits }}
{{- end -}}
metadata:
  labels:
    {{- include "specdec.labels" $labels | nindent 4 }}
  {{- with $values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  automountServiceAccountToken: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
  {{- with include "specdec.modelsInit" . | trim }}{{ . | nindent 2 }}{{ end }}
  containers:
    - name: {{ .component }}
      image: {{ include "specdec.image" (dict "root" $root "image" $values.image) }}
      imagePullPolicy: {{ $values.image.pullPolicy }}
      args:
        {{- include "specdec.commonArgs" (dict "root" $root "values" $values) | nindent 8 }}
        {{- if $modelDir }}
        - --model={{ include "specdec.modelPath" (dict "root" $root "path" $modelDir) }}
        {{- end }}
        - --device={{ $values.device }}
        - --slots={{ $values.slots }}
        {{- if hasKey $values "aheadSlots" }}
        - --ahead-slots={{ $values.aheadSlots }}
        {{- end }}
        - --max-seq-len={{ $root.Values.generation.maxSeqLen }}
        {{- if gt $tp 1 }}
        - --tensor-parallel={{ $tp }}
        {{- end }}
        {{- range .tpArgs }}
        - {{ . }}
        {{- end }}
        {{- include "specdec.tls.args" . | nindent 8 }}
        {{- with $values.extraArgs }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      env:
        {{- include "specdec.env" $root | nindent 8 }}
        {{- with $values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- if not $worker }}
      ports:
        {{- include "specdec.containerPorts" (dict "root" $root "values" $values "component" .component) | nindent 8 }}
      {{- include "specdec.grpcProbes" . | nindent 6 }}
      {{- end }}
      resources:
        {{- toYaml $resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.containerSecurityContext | nindent 8 }}
      volumeMounts:
        {{- include "specdec.volumeMounts" $root | nindent 8 }}
        {{- include "specdec.tls.mounts" . | nindent 8 }}
        {{- if gt $tp 1 }}
        - name: dshm  # NCCL's shared-memory transport between the ranks of this pod
          mountPath: /dev/shm
        {{- end }}
  volumes:
    {{- include "specdec.volumes" $root | nindent 4 }}
    {{- include "specdec.tls.volumes" . | nindent 4 }}
    {{- if gt $tp 1 }}
    - name: dshm
      emptyDir:
        medium: Memory
    {{- end }}
  {{- with $values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
The headless Service of a pool: one DNS record per ready pod, and the EndpointSlices the router
watches. Call with (dict "root" $ "component" "draft") or "verifier".
*/}}
{{- define "specdec.engine.service" -}}
{{- $root := .root }}
{{- $values := index $root.Values .component }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "specdec.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "specdec.labels" . | nindent 4 }}
spec:
  clusterIP: None
  selector:
    {{- include "specdec.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $values.port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    {{- if $root.Values.metrics.enabled }}
    - name: metrics
      port: {{ $root.Values.metrics.port }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
    {{- end }}
{{- end }}
