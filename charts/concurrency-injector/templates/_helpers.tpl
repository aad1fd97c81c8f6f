{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "concurrency-injector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated to 63 characters. A release name that already contains
the chart name is used as is.
*/}}
{{- define "concurrency-injector.fullname" -}}
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

{{/*
Chart name and version, as used by the helm.sh/chart label.
*/}}
{{- define "concurrency-injector.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "concurrency-injector.labels" -}}
helm.sh/chart: {{ include "concurrency-injector.chart" . }}
{{ include "concurrency-injector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: webhook
app.kubernetes.io/part-of: concurrency-injector
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "concurrency-injector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "concurrency-injector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the service account (one per release, created by the chart).
*/}}
{{- define "concurrency-injector.serviceAccountName" -}}
{{- include "concurrency-injector.fullname" . }}
{{- end }}

{{/*
Name of the MutatingWebhookConfiguration (cluster-scoped, so the release name keeps it unique).
*/}}
{{- define "concurrency-injector.webhookConfigName" -}}
{{- include "concurrency-injector.fullname" . }}
{{- end }}

{{/*
Name of the webhook inside the configuration: a fully qualified name, as the API requires.
*/}}
{{- define "concurrency-injector.webhookName" -}}
pods.concurrency-injector.io
{{- end }}

{{/*
The TLS mode: "selfManaged", "certManager" or "existingSecret". Conflicting values fail the
render with a message that names them.
*/}}
{{- define "concurrency-injector.tlsMode" -}}
{{- $tls := .Values.tls }}
{{- if and $tls.certManager.enabled $tls.existingSecret }}
{{- fail "tls: set either tls.certManager.enabled or tls.existingSecret, not both" }}
{{- end }}
{{- if and $tls.certManager.enabled $tls.caBundle }}
{{- fail "tls: tls.caBundle is injected by cert-manager when tls.certManager.enabled is true; leave it empty" }}
{{- end }}
{{- if and $tls.existingSecret (not $tls.caBundle) }}
{{- fail "tls: tls.existingSecret needs tls.caBundle (the base64 PEM of the CA that signed it)" }}
{{- end }}
{{- if and $tls.caBundle (not $tls.existingSecret) }}
{{- fail "tls: tls.caBundle is only used with tls.existingSecret; set both, or neither for self-managed TLS" }}
{{- end }}
{{- if $tls.certManager.enabled }}certManager
{{- else if $tls.existingSecret }}existingSecret
{{- else }}selfManaged
{{- end }}
{{- end }}

{{/*
Name of the Secret that holds the serving certificate.
*/}}
{{- define "concurrency-injector.tlsSecretName" -}}
{{- if .Values.tls.existingSecret }}
{{- .Values.tls.existingSecret }}
{{- else }}
{{- printf "%s-tls" (include "concurrency-injector.fullname" . | trunc 59 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/*
Name of the cert-manager Certificate and of the self-signed Issuer.
*/}}
{{- define "concurrency-injector.certificateName" -}}
{{- include "concurrency-injector.fullname" . }}
{{- end }}

{{/*
Whether the matchConditions field may be rendered: GA (admissionregistration.k8s.io/v1) from
Kubernetes 1.30. Older API servers would drop or reject it.
*/}}
{{- define "concurrency-injector.supportsMatchConditions" -}}
{{- if semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version }}true{{- end }}
{{- end }}

{{/*
The server's own worker count from its own CPU limit: floor(limit), at least 1 (dogfood).
Accepts "1", "1.5", 2 and "500m". Empty when no CPU limit is set.
*/}}
{{- define "concurrency-injector.ownWorkers" -}}
{{- $cpu := "" }}
{{- with .Values.resources }}{{ with .limits }}{{ with .cpu }}{{ $cpu = toString . }}{{ end }}{{ end }}{{ end }}
{{- if $cpu }}
{{- $cores := 0.0 }}
{{- if hasSuffix "m" $cpu }}
{{- $cores = divf (float64 (trimSuffix "m" $cpu)) 1000 }}
{{- else }}
{{- $cores = float64 $cpu }}
{{- end }}
{{- max 1 (int (floor $cores)) }}
{{- end }}
{{- end }}

{{/*
Image reference: the digest wins over the tag; the tag defaults to the appVersion.
*/}}
{{- define "concurrency-injector.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Whether the pod needs an API token: self-managed TLS (Secret and webhook configuration) or the
envFrom ConfigMap check. Without either, no token is mounted at all.
*/}}
{{- define "concurrency-injector.needsApiAccess" -}}
{{- if or (eq (include "concurrency-injector.tlsMode" .) "selfManaged") .Values.server.readConfigMaps }}true{{- end }}
{{- end }}

{{/*
The `helm test` self-test: its objects' name, labels (never the webhook's selector labels, so no
Service, ReplicaSet or PodDisruptionBudget of the webhook counts its pod), and the labelled
namespace it dry-runs a pod in: test.namespace, else one the test creates for the run.
*/}}
{{- define "concurrency-injector.selftestName" -}}
{{- printf "%s-selftest" (include "concurrency-injector.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "concurrency-injector.selftestLabels" -}}
helm.sh/chart: {{ include "concurrency-injector.chart" . }}
app.kubernetes.io/name: {{ printf "%s-selftest" (include "concurrency-injector.name" . | trunc 54 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: selftest
app.kubernetes.io/part-of: concurrency-injector
{{- end }}

{{- define "concurrency-injector.selftestNamespace" -}}
{{- $namespace := default (include "concurrency-injector.selftestName" .) .Values.test.namespace }}
{{- $excluded := concat (list "kube-system" "kube-node-lease" .Release.Namespace) .Values.webhook.excludeNamespaces }}
{{- if has $namespace $excluded }}
{{- fail (printf "test.namespace: %s is never sent to the webhook (excluded); name a namespace labelled concurrency-injector.io/enabled=true" $namespace) }}
{{- end }}
{{- $namespace }}
{{- end }}
