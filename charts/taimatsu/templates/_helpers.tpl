{{/* The chart name, or nameOverride. */}}
{{- define "taimatsu.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else the release name, followed by the
chart name unless the release name already contains it. At most 40 characters, so that
suffixes such as "-webhook-tls" and "-leader-election" keep names within 63.
*/}}
{{- define "taimatsu.fullname" -}}
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

{{/* chart label value: name-version. */}}
{{- define "taimatsu.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods (immutable in a Deployment: never add to them). */}}
{{- define "taimatsu.selectorLabels" -}}
app.kubernetes.io/name: {{ include "taimatsu.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* A label map as `k=v,k=v`, sorted by key (the operator's label flags). */}}
{{- define "taimatsu.labelList" -}}
{{- $pairs := list }}
{{- range $k, $v := . }}{{ $pairs = append $pairs (printf "%s=%s" $k $v) }}{{ end }}
{{- join "," $pairs }}
{{- end }}

{{/* The operator pods' selector labels as `k=v,k=v`. */}}
{{- define "taimatsu.selectorLabelList" -}}
{{- include "taimatsu.labelList" (include "taimatsu.selectorLabels" . | fromYaml) }}
{{- end }}

{{/* Standard labels of every object. */}}
{{- define "taimatsu.labels" -}}
helm.sh/chart: {{ include "taimatsu.chart" . }}
{{ include "taimatsu.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: taimatsu
{{- end }}

{{/* The ServiceAccount's name. */}}
{{- define "taimatsu.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "taimatsu.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {registry, repository, tag, digest}: tag defaults to appVersion. */}}
{{- define "taimatsu.imageRef" -}}
{{- $image := index . 0 }}{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s/%s@%s" $image.registry $image.repository $image.digest }}
{{- else }}
{{- printf "%s/%s:%s" $image.registry $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* The webhook's Service and certificate Secret. */}}
{{- define "taimatsu.webhookServiceName" -}}
{{- printf "%s-webhook" (include "taimatsu.fullname" .) }}
{{- end }}
{{- define "taimatsu.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "taimatsu.fullname" .) }}
{{- end }}

{{/*
The ValidatingWebhookConfiguration's name. Fixed, not derived from the release: the
operator's ClusterRole (files/clusterrole.yaml) names it in resourceNames. One webhook
registration, so one operator release, per cluster.
*/}}
{{- define "taimatsu.webhookConfigurationName" -}}
taimatsu-operator
{{- end }}

{{/* DNS names the API server may use to reach the webhook Service. */}}
{{- define "taimatsu.webhookDNSNames" -}}
{{- $svc := include "taimatsu.webhookServiceName" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson }}
{{- end }}

{{/*
The webhook's certificate when Helm makes it (webhook.certManager.enabled=false), as YAML
{crt, key, ca} (base64). Reused from the existing Secret on upgrade (`lookup`), so an upgrade
does not rotate it; generated otherwise (`helm template` has no cluster: always generated).
Computed once per render and remembered, so that the Secret, the caBundle and the pods'
checksum annotation agree although they are rendered by different templates.
*/}}
{{- define "taimatsu.webhookTLS" -}}
{{- if not (hasKey .Values "__taimatsuWebhookTLS") }}
{{- $tls := dict }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "taimatsu.webhookSecretName" .) }}
{{- $data := dig "data" (dict) $existing }}
{{- if and (hasKey $data "tls.crt") (hasKey $data "tls.key") (hasKey $data "ca.crt") }}
{{- $tls = dict "crt" (index $data "tls.crt") "key" (index $data "tls.key") "ca" (index $data "ca.crt") }}
{{- else }}
{{- $days := int .Values.webhook.certs.validityDays }}
{{- $ca := genCA "taimatsu-webhook-ca" $days }}
{{- $svc := include "taimatsu.webhookServiceName" . }}
{{- $cn := printf "%s.%s.svc" $svc .Release.Namespace }}
{{- $cert := genSignedCert $cn nil (include "taimatsu.webhookDNSNames" . | fromJsonArray) $days $ca }}
{{- $tls = dict "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) "ca" ($ca.Cert | b64enc) }}
{{- end }}
{{- $_ := set .Values "__taimatsuWebhookTLS" $tls }}
{{- end }}
{{- get .Values "__taimatsuWebhookTLS" | toYaml }}
{{- end }}
