{{/* The release's resource name prefix, at most 63 characters. */}}
{{- define "baton.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "baton.labels" -}}
app.kubernetes.io/name: baton
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "baton.selector" -}}
app.kubernetes.io/name: baton
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* An image of this release: (dict "root" $ "name" "coordinator"). */}}
{{- define "baton.image" -}}
{{- $tag := .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s/baton-%s:%s" .root.Values.image.registry .name $tag -}}
{{- end -}}

{{/* "true" when the coordinator serves TLS (a Secret given, or cert-manager issues one). */}}
{{- define "baton.tls" -}}
{{- if or .Values.security.tls.existingSecret .Values.security.tls.certManager.issuerName -}}true{{- end -}}
{{- end -}}

{{/* The coordinator's TLS Secret (tls.crt, tls.key, ca.crt). */}}
{{- define "baton.tlsSecret" -}}
{{- .Values.security.tls.existingSecret | default (printf "%s-coordinator-tls" (include "baton.fullname" .)) -}}
{{- end -}}

{{/* A pool's client certificate Secret: (dict "root" $ "pool" $pool). */}}
{{- define "baton.clientCertSecret" -}}
{{- .pool.clientCertSecret | default (printf "%s-agent-%s-tls" (include "baton.fullname" .root) .pool.name) -}}
{{- end -}}

{{/* The coordinator's Service: where agents, clients and helm test connect. */}}
{{- define "baton.coordinatorUrl" -}}
{{- $scheme := ternary "https" "http" (eq (include "baton.tls" .) "true") -}}
{{- printf "%s://%s-coordinator.%s.svc:%v" $scheme (include "baton.fullname" .) .Release.Namespace .Values.coordinator.service.port -}}
{{- end -}}

{{/* Under TLS, a client's flag for the coordinator's CA (mounted by "baton.caVolume"). */}}
{{- define "baton.caArgs" -}}
- --tls-ca=/etc/baton/ca/ca.crt
{{- end -}}

{{/* Under TLS, the coordinator's CA only (not its key), for its clients. */}}
{{- define "baton.caVolume" -}}
- name: ca
  secret: {secretName: {{ include "baton.tlsSecret" . }}, items: [{key: ca.crt, path: ca.crt}]}
{{- end -}}

{{/* etcd's client URLs, comma-separated. */}}
{{- define "baton.etcdEndpoints" -}}
{{- if .Values.etcd.deploy -}}
{{- $name := printf "%s-etcd" (include "baton.fullname" .) -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $urls = append $urls (printf "http://%s-%d.%s.%s.svc:2379" $name $i $name $.Release.Namespace) -}}
{{- end -}}
{{- join "," $urls -}}
{{- else -}}
{{- join "," .Values.etcd.endpoints -}}
{{- end -}}
{{- end -}}

{{/* Environment every baton container gets: OTLP export and resource attributes. */}}
{{- define "baton.otelEnv" -}}
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
{{- end }}
{{- $attrs := list (printf "k8s.namespace.name=%s" .Release.Namespace) "k8s.pod.name=$(POD_NAME)" "k8s.node.name=$(NODE_NAME)" -}}
{{- range $k, $v := .Values.otel.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%s" $k $v) -}}
{{- end }}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: NODE_NAME
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- end -}}

{{- define "baton.podAnnotations" -}}
{{- if .Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}
