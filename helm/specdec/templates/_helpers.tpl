{{/*
Names, labels and the pieces shared by the router, draft and verifier pods.
*/}}

{{- define "specdec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The object-name prefix, at most 45 characters so "<prefix>-verifier-..." stays legal. */}}
{{- define "specdec.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "specdec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of a component. Call with (dict "root" $ "component" "router"). */}}
{{- define "specdec.labels" -}}
helm.sh/chart: {{ include "specdec.chart" .root }}
{{ include "specdec.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: specdec
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of a component. Call with (dict "root" $ "component" "router"). */}}
{{- define "specdec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "specdec.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* Object name of a component: "<fullname>-<component>". */}}
{{- define "specdec.componentName" -}}
{{- printf "%s-%s" (include "specdec.fullname" .root) .component }}
{{- end }}

{{- define "specdec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-router" (include "specdec.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "repository:tag" of an image block; the tag defaults to the chart's appVersion. */}}
{{- define "specdec.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion (toString .image.tag)) }}
{{- end }}

{{/* Static address of a pool's headless Service: "<svc>.<ns>.svc.<domain>:<port>". */}}
{{- define "specdec.poolAddress" -}}
{{- $values := index .root.Values .component -}}
{{- printf "%s.%s.svc.%s:%d" (include "specdec.componentName" .) .root.Release.Namespace .root.Values.clusterDomain (int $values.port) }}
{{- end }}

{{/* True (non-empty) when the in-chart Redis is rendered. */}}
{{- define "specdec.redis.inChart" -}}
{{- if and .Values.redis.enabled (not .Values.redis.external.url) }}true{{- end }}
{{- end }}

{{/* Absolute model folder of a role. */}}
{{- define "specdec.modelPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .root.Values.models.mountPath) (trimPrefix "/" .path) }}
{{- end }}

{{/* The pod volumes of every specdec pod: /tmp and the models. Call with the root context. */}}
{{- define "specdec.volumes" -}}
- name: tmp
  emptyDir:
    {{- with .Values.tmp.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
- name: models
  {{- if eq .Values.models.source "existingClaim" }}
  persistentVolumeClaim:
    claimName: {{ required "models.existingClaim is required with models.source=existingClaim" .Values.models.existingClaim }}
    readOnly: true
  {{- else if eq .Values.models.source "hostPath" }}
  hostPath:
    path: {{ required "models.hostPath is required with models.source=hostPath" .Values.models.hostPath }}
    type: Directory
  {{- else }}
  emptyDir:
    {{- with .Values.models.init.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
  {{- end }}
{{- end }}

{{/* Mounts matching specdec.volumes: the models are read-only to the services. */}}
{{- define "specdec.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: models
  mountPath: {{ .Values.models.mountPath }}
  readOnly: true
{{- end }}

{{/* The init container that fills the models emptyDir (models.source=init). Call with
(dict "root" $ "component" "draft"). */}}
{{- define "specdec.modelsInit" -}}
{{- $models := .root.Values.models }}
{{- if eq $models.source "init" }}
initContainers:
  - name: fetch-models
    image: {{ include "specdec.image" (dict "root" .root "image" $models.init.image) }}
    imagePullPolicy: {{ $models.init.image.pullPolicy }}
    command:
      {{- toYaml $models.init.command | nindent 6 }}
    env:
      - name: SPECDEC_ROLE
        value: {{ .component }}
      - name: MODELS_DIR
        value: {{ $models.mountPath | quote }}
      - name: MODEL_TARGET
        value: {{ include "specdec.modelPath" (dict "root" .root "path" $models.target) | quote }}
      - name: MODEL_DRAFT
        value: {{ include "specdec.modelPath" (dict "root" .root "path" $models.draft) | quote }}
      - name: HOME
        value: /tmp
      {{- with $models.init.env }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    securityContext:
      {{- toYaml .root.Values.containerSecurityContext | nindent 6 }}
    {{- with $models.init.resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      - name: models
        mountPath: {{ $models.mountPath }}
{{- end }}
{{- end }}

{{/* Environment shared by the router, draft and verifier containers. */}}
{{- define "specdec.env" -}}
- name: HOME
  value: /tmp
- name: PYTHONUNBUFFERED
  value: "1"
{{- with .Values.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The three native gRPC probes of a component, on its gRPC port or, when that speaks TLS, its
plaintext health port. Call with (dict "root" $ "component" "router"). */}}
{{- define "specdec.grpcProbes" -}}
{{- $values := index .root.Values .component }}
{{- $port := include "specdec.tls.probePort" . }}
startupProbe:
  grpc:
    port: {{ $port }}
  {{- toYaml $values.startupProbe | nindent 2 }}
livenessProbe:
  grpc:
    port: {{ $port }}
  {{- toYaml $values.livenessProbe | nindent 2 }}
readinessProbe:
  grpc:
    port: {{ $port }}
  {{- toYaml $values.readinessProbe | nindent 2 }}
{{- end }}

{{/* Container ports of a specdec component. Call with (dict "root" $ "values" $values
"component" "router"). */}}
{{- define "specdec.containerPorts" -}}
- name: grpc
  containerPort: {{ .values.port }}
  protocol: TCP
{{- if include "specdec.tls.serves" . }}
- name: health
  containerPort: {{ .root.Values.healthPort }}
  protocol: TCP
{{- end }}
{{- if .root.Values.metrics.enabled }}
- name: metrics
  containerPort: {{ .root.Values.metrics.port }}
  protocol: TCP
{{- end }}
{{- end }}

{{/* Arguments shared by every specdec service: listen address and metrics. */}}
{{- define "specdec.commonArgs" -}}
- --listen=0.0.0.0:{{ .values.port }}
{{- if .root.Values.metrics.enabled }}
- --metrics-port={{ .root.Values.metrics.port }}
- --metrics-host=0.0.0.0
{{- end }}
{{- end }}
