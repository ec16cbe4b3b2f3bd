{{/*
Transport security of the pods: which Secret holds a role's certificate, the volumes and mounts
that bring it in, the flags that use it, and the port the probes use.
*/}}

{{/* True (non-empty) when the router and the replicas speak mTLS. */}}
{{- define "specdec.tls.internal" -}}
{{- if ne .Values.tls.internal.source "disabled" }}true{{- end }}
{{- end }}

{{/* True (non-empty) when a component's gRPC port speaks TLS, so its probes need the plaintext
health port. Call with (dict "root" $ "component" "router"). */}}
{{- define "specdec.tls.serves" -}}
{{- if eq .component "router" }}
{{- if .root.Values.tls.public.secretName }}true{{- end }}
{{- else }}
{{- include "specdec.tls.internal" .root }}
{{- end }}
{{- end }}

{{/* The Secret (ca.crt, tls.crt, tls.key) of a certificate: "replica" or "router". Call with
(dict "root" $ "cert" "replica"). */}}
{{- define "specdec.tls.secretName" -}}
{{- $internal := .root.Values.tls.internal }}
{{- if eq $internal.source "existingSecret" }}
{{- index $internal.existingSecret .cert }}
{{- else }}
{{- printf "%s-%s-tls" (include "specdec.fullname" .root) .cert }}
{{- end }}
{{- end }}

{{/* Volumes of a component's certificates and keys. Call with (dict "root" $ "component" ...). */}}
{{- define "specdec.tls.volumes" -}}
{{- $values := .root.Values }}
{{- if include "specdec.tls.internal" .root }}
- name: internal-tls
  secret:
    secretName: {{ include "specdec.tls.secretName" (dict "root" .root "cert" (ternary "router" "replica" (eq .component "router"))) }}
    defaultMode: 0440
    items:
      - {key: ca.crt, path: ca.crt}
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
{{- end }}
{{- if eq .component "router" }}
{{- with $values.tls.public.secretName }}
- name: public-tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
{{- end }}
{{- with $values.auth.apiKeysSecret }}
- name: api-keys
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - {key: {{ $values.auth.apiKeysKey }}, path: api-keys}
{{- end }}
{{- end }}
{{- end }}

{{/* Mounts matching specdec.tls.volumes. */}}
{{- define "specdec.tls.mounts" -}}
{{- if include "specdec.tls.internal" .root }}
- name: internal-tls
  mountPath: /etc/specdec/internal-tls
  readOnly: true
{{- end }}
{{- if eq .component "router" }}
{{- if .root.Values.tls.public.secretName }}
- name: public-tls
  mountPath: /etc/specdec/public-tls
  readOnly: true
{{- end }}
{{- if .root.Values.auth.apiKeysSecret }}
- name: api-keys
  mountPath: /etc/specdec/api-keys
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/* The flags of transport security and API keys. Call with (dict "root" $ "component" ...). */}}
{{- define "specdec.tls.args" -}}
{{- $values := .root.Values }}
{{- $dir := "/etc/specdec/internal-tls" }}
{{- if eq .component "router" }}
{{- if include "specdec.tls.internal" .root }}
- --peer-ca={{ $dir }}/ca.crt
- --peer-cert={{ $dir }}/tls.crt
- --peer-key={{ $dir }}/tls.key
- --peer-name={{ $values.tls.internal.serverName }}
{{- end }}
{{- if $values.tls.public.secretName }}
- --tls-cert=/etc/specdec/public-tls/tls.crt
- --tls-key=/etc/specdec/public-tls/tls.key
{{- else }}
- --insecure
{{- end }}
{{- if $values.auth.apiKeysSecret }}
- --api-keys-file=/etc/specdec/api-keys/api-keys
{{- end }}
{{- else if include "specdec.tls.internal" .root }}
- --tls-cert={{ $dir }}/tls.crt
- --tls-key={{ $dir }}/tls.key
- --tls-client-ca={{ $dir }}/ca.crt
{{- else }}
- --insecure
{{- end }}
{{- if include "specdec.tls.serves" . }}
- --health-listen=0.0.0.0:{{ $values.healthPort }}
{{- end }}
{{- end }}

{{/* The port the probes use: the health port when the gRPC port speaks TLS. */}}
{{- define "specdec.tls.probePort" -}}
{{- if include "specdec.tls.serves" . }}{{ .root.Values.healthPort }}{{- else }}{{ (index .root.Values .component).port }}{{- end }}
{{- end }}
