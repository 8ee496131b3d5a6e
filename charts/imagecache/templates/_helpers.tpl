{{/* Names. Kubernetes names are at most 63 characters; suffixes are added after trimming. */}}
{{- define "imagecache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "imagecache.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "imagecache.webhookName" -}}{{ include "imagecache.fullname" . }}-webhook{{- end }}
{{- define "imagecache.controllerName" -}}{{ include "imagecache.fullname" . }}-controller{{- end }}
{{- define "imagecache.builderName" -}}{{ include "imagecache.fullname" . }}-builder{{- end }}
{{- define "imagecache.mirrorName" -}}{{ include "imagecache.fullname" . }}-mirror{{- end }}
{{- define "imagecache.testName" -}}{{ include "imagecache.fullname" . }}-test{{- end }}
{{/* The Secret holding the webhook's tls.crt, tls.key and ca.crt (controller or cert-manager). */}}
{{- define "imagecache.tlsSecret" -}}{{ include "imagecache.fullname" . }}-webhook-tls{{- end }}
{{/* Cluster-scoped: the release name keeps two releases apart. */}}
{{- define "imagecache.webhookConfigName" -}}{{ include "imagecache.fullname" . }}{{- end }}
{{- define "imagecache.leaseName" -}}
{{- default (printf "%s-controller" (include "imagecache.fullname" .)) .Values.controller.leaderElection.leaseName }}
{{- end }}

{{/* DNS names the API server may dial for the webhook Service. */}}
{{- define "imagecache.serviceDNSNames" -}}
{{- $svc := include "imagecache.webhookName" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson }}
{{- end }}

{{/* Labels. Call with (dict "root" $ "component" "webhook"). */}}
{{- define "imagecache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imagecache.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "imagecache.labels" -}}
{{ include "imagecache.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: imagecache
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod labels: the chart's own pods are never sent to the webhook (objectSelector). */}}
{{- define "imagecache.podLabels" -}}
{{ include "imagecache.labels" . }}
imagecache.dev/skip: "true"
{{- end }}

{{/* Images. */}}
{{- define "imagecache.imageRef" -}}
{{- if .digest }}{{ .repository }}@{{ .digest }}{{ else }}{{ .repository }}:{{ .tag }}{{ end }}
{{- end }}

{{- define "imagecache.image" -}}
{{- include "imagecache.imageRef" (dict "repository" .Values.image.repository "tag" (default .Chart.AppVersion .Values.image.tag) "digest" .Values.image.digest) }}
{{- end }}

{{- define "imagecache.builderImage" -}}
{{- $b := .Values.builder.image }}
{{- if or $b.repository $b.tag $b.digest }}
{{- include "imagecache.imageRef" (dict "repository" (default .Values.image.repository $b.repository) "tag" (default (default .Chart.AppVersion .Values.image.tag) $b.tag) "digest" $b.digest) }}
{{- else }}
{{- include "imagecache.image" . }}
{{- end }}
{{- end }}

{{/* Security contexts: non-root (the image's numeric user), read-only root, no capabilities. */}}
{{- define "imagecache.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "imagecache.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* PodDisruptionBudget: policy/v1 from Kubernetes 1.21; 1.20 only knows policy/v1beta1.
A cluster's discovery lists "policy/v1/PodDisruptionBudget"; `helm template` lists only group
versions (whatever --kube-version says), hence the version check. */}}
{{- define "imagecache.pdbApiVersion" -}}
{{- $caps := .Capabilities }}
{{- if or ($caps.APIVersions.Has "policy/v1/PodDisruptionBudget") (and ($caps.APIVersions.Has "policy/v1") (semverCompare ">=1.21-0" $caps.KubeVersion.Version)) -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end }}
{{- end }}

{{/* The namespaceSelector expressions both webhook entries share. */}}
{{- define "imagecache.namespaceExpressions" -}}
- key: kubernetes.io/metadata.name
  operator: NotIn
  values: {{ concat (list "kube-system" .Release.Namespace) .Values.webhook.excludeNamespaces | uniq | toJson }}
- key: imagecache.dev/webhook
  operator: NotIn
  values: [disabled]
{{- with .Values.webhook.namespaceSelector.extraMatchExpressions }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "imagecache.objectSelector" -}}
matchExpressions:
  - key: imagecache.dev/skip
    operator: NotIn
    values: ["true"]
{{- with .Values.webhook.objectSelector.extraMatchExpressions }}
{{ toYaml . | indent 2 }}
{{- end }}
{{- end }}

{{- /* The kubelet's root directory on the nodes, no trailing slash; mirror.kubeletDir is the
deprecated spelling and wins when set. Every node part mounts <kubeletDir>/pods at the same
path inside its container, so paths it reads or hands on are the node's. */ -}}
{{- define "imagecache.kubeletDir" -}}
{{- trimSuffix "/" (default .Values.kubeletDir .Values.mirror.kubeletDir) -}}
{{- end }}

{{/* --log-level and --log-format, the same for every part (values logLevel, logFormat). */}}
{{- define "imagecache.logArgs" -}}
- --log-level
- {{ .Values.logLevel }}
- --log-format
- {{ .Values.logFormat }}
{{- end }}
