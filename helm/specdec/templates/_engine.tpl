{{/*
The draft and verifier pools: one GPU Deployment each, on its own node pool. Call with
(dict "root" $ "component" "draft") or "verifier".
*/}}
{{- define "specdec.engine.deployment" -}}
{{- $root := .root }}
{{- $values := index $root.Values .component }}
{{- $modelDir := ternary $root.Values.models.target $root.Values.models.draft (eq .component "verifier") }}
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
    metadata:
      labels:
        {{- include "specdec.labels" . | nindent 8 }}
      {{- with $values.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
      {{- with include "specdec.modelsInit" . | trim }}{{ . | nindent 6 }}{{ end }}
      containers:
        - name: {{ .component }}
          image: {{ include "specdec.image" (dict "root" $root "image" $values.image) }}
          imagePullPolicy: {{ $values.image.pullPolicy }}
          args:
            {{- include "specdec.commonArgs" (dict "root" $root "values" $values) | nindent 12 }}
            {{- if $modelDir }}
            - --model={{ include "specdec.modelPath" (dict "root" $root "path" $modelDir) }}
            {{- end }}
            - --device={{ $values.device }}
            - --slots={{ $values.slots }}
            {{- if hasKey $values "aheadSlots" }}
            - --ahead-slots={{ $values.aheadSlots }}
            {{- end }}
            - --max-seq-len={{ $root.Values.generation.maxSeqLen }}
            {{- include "specdec.tls.args" . | nindent 12 }}
            {{- with $values.extraArgs }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          env:
            {{- include "specdec.env" $root | nindent 12 }}
            {{- with $values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            {{- include "specdec.containerPorts" (dict "root" $root "values" $values "component" .component) | nindent 12 }}
          {{- include "specdec.grpcProbes" . | nindent 10 }}
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            {{- include "specdec.volumeMounts" $root | nindent 12 }}
            {{- include "specdec.tls.mounts" . | nindent 12 }}
      volumes:
        {{- include "specdec.volumes" $root | nindent 8 }}
        {{- include "specdec.tls.volumes" . | nindent 8 }}
      {{- with $values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
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
