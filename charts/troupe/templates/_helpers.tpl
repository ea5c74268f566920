{{- define "troupe.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "troupe.selectorLabels" -}}
app.kubernetes.io/name: troupe-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "troupe.labels" -}}
{{ include "troupe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: troupe
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "troupe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "troupe.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- /*
The custom metrics TLS material as YAML {ca, cert, key}: the existing Secret's when there is
one (so upgrades keep the CA the APIService trusts), else a new CA and a serving certificate
for the Service's DNS names. Memoised in .Values so every template sees the same material.
*/ -}}
{{- define "troupe.customMetricsTLS" -}}
{{- if not (hasKey .Values "__customMetricsTLS") -}}
{{- $name := printf "%s-custom-metrics-tls" (include "troupe.fullname" .) -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $name -}}
{{- $tls := dict -}}
{{- if and $existing $existing.data (index $existing.data "ca.crt") (index $existing.data "tls.crt") (index $existing.data "tls.key") -}}
{{- $tls = dict "ca" (index $existing.data "ca.crt" | b64dec) "cert" (index $existing.data "tls.crt" | b64dec) "key" (index $existing.data "tls.key" | b64dec) -}}
{{- else -}}
{{- $svc := printf "%s-custom-metrics" (include "troupe.fullname" .) -}}
{{- $ns := .Release.Namespace -}}
{{- $days := int .Values.customMetrics.certValidityDays -}}
{{- $ca := genCA "troupe-custom-metrics-ca" $days -}}
{{- $dns := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- $cert := genSignedCert (printf "%s.%s.svc" $svc $ns) nil $dns $days $ca -}}
{{- $tls = dict "ca" $ca.Cert "cert" $cert.Cert "key" $cert.Key -}}
{{- end -}}
{{- $_ := set .Values "__customMetricsTLS" $tls -}}
{{- end -}}
{{- toYaml (get .Values "__customMetricsTLS") -}}
{{- end -}}
