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

{{- /*
Refuses to register the custom metrics API over another provider's. An APIService of
custom.metrics.k8s.io that this release does not own (prometheus-adapter, another Troupe
release, anything else) serves other teams' HPAs: a second version of the group would change
which server they reach. `helm template` (no cluster) looks up nothing and cannot refuse.
*/ -}}
{{- define "troupe.customMetricsGuard" -}}
{{- $all := lookup "apiregistration.k8s.io/v1" "APIService" "" "" -}}
{{- range (dig "items" list $all) -}}
{{- if eq (dig "spec" "group" "" .) "custom.metrics.k8s.io" -}}
{{- $release := dig "metadata" "annotations" "meta.helm.sh/release-name" "" . -}}
{{- $releaseNs := dig "metadata" "annotations" "meta.helm.sh/release-namespace" "" . -}}
{{- if not (and (eq $release $.Release.Name) (eq $releaseNs $.Release.Namespace)) -}}
{{- $owner := "no Helm release" -}}
{{- if $release }}{{ $owner = printf "Helm release %s/%s" $releaseNs $release }}{{ end -}}
{{- $svc := "no service" -}}
{{- with (dig "spec" "service" dict .) }}{{ $svc = printf "service %s/%s" (dig "namespace" "" .) (dig "name" "" .) }}{{ end -}}
{{- fail (printf "APIService %s already serves custom.metrics.k8s.io (%s, %s), and this release does not own it. Another provider answers other teams' custom-metric HPAs there; Troupe will not register beside it. Install with --set customMetrics.enabled=false and serve troupe_mailbox_depth from that provider: the adapter rule is in the chart README, section \"Using prometheus-adapter instead\"." .metadata.name $svc $owner) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* Labels of every monitoring object: the chart's, then monitoring.labels. */ -}}
{{- define "troupe.monitoringLabels" -}}
{{ include "troupe.labels" . }}
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- /* The namespaceSelector of the node-pod monitors: monitoring.actorClusterNamespaces, or any. */ -}}
{{- define "troupe.actorClusterNamespaceSelector" -}}
{{- with .Values.monitoring.actorClusterNamespaces -}}
matchNames:
  {{- toYaml . | nindent 2 }}
{{- else -}}
any: true
{{- end }}
{{- end -}}

{{- /* The labels of the node pods, as the operator sets them (contract/src/lib.rs `labels`). */ -}}
{{- define "troupe.nodeSelectorLabels" -}}
app.kubernetes.io/name: troupe-node
app.kubernetes.io/managed-by: troupe-operator
{{- end -}}

{{- /* An alert's labels: (list $ severity); monitoring.prometheusRule.alertLabels added. */ -}}
{{- define "troupe.alertLabels" -}}
{{- $root := index . 0 -}}
{{- toYaml (merge (dict "severity" (index . 1)) ($root.Values.monitoring.prometheusRule.alertLabels | default dict)) -}}
{{- end -}}

{{- /*
An alert's runbook_url annotation on a line of its own, when
monitoring.prometheusRule.runbookBaseURL is set (else nothing): (list $ alert).
*/ -}}
{{- define "troupe.runbookURL" -}}
{{- $root := index . 0 -}}
{{- with $root.Values.monitoring.prometheusRule.runbookBaseURL -}}
{{- printf "runbook_url: %s" (printf "%s#%s" . (lower (index $ 1)) | quote) | nindent 12 -}}
{{- end -}}
{{- end -}}

{{- /* The node ClusterRole the operator binds in each ActorCluster's namespace. */ -}}
{{- define "troupe.nodeClusterRole" -}}
{{- printf "%s-node" (include "troupe.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
