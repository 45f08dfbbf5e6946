{{/* Chart name, at most 63 characters (a label value). */}}
{{- define "astro-janitor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name, at most 52 characters: the CronJob controller appends "-<minutes since epoch>"
(11 characters) to name each Job, and a Job name must fit a 63-character label value.
*/}}
{{- define "astro-janitor.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "astro-janitor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "astro-janitor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "astro-janitor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "astro-janitor.labels" -}}
helm.sh/chart: {{ include "astro-janitor.chart" . }}
{{ include "astro-janitor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: janitor
{{- end }}

{{- define "astro-janitor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "astro-janitor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "astro-janitor.leaseName" -}}
{{- default (include "astro-janitor.fullname" .) .Values.lease.name }}
{{- end }}

{{/* The Leases a run takes: one per shard (README "Sharding"), as a YAML list. */}}
{{- define "astro-janitor.leaseNames" -}}
{{- $lease := include "astro-janitor.leaseName" . }}
{{- $shards := int .Values.shards }}
{{- if gt $shards 1 }}
{{- range $index := until $shards }}
- {{ printf "%s-shard-%d-of-%d" $lease $index $shards | quote }}
{{- end }}
{{- else }}
- {{ $lease | quote }}
{{- end }}
{{- end }}

{{- define "astro-janitor.credentialsSecretName" -}}
{{- printf "%s-credentials" (include "astro-janitor.fullname" .) }}
{{- end }}

{{- define "astro-janitor.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Which JANITOR_* variable each entry of .Values.credentials feeds. */}}
{{- define "astro-janitor.credentialVariables" -}}
houstonDsn: JANITOR_HOUSTON_DSN
airflowDsn: JANITOR_AIRFLOW_DSN
registryUsername: JANITOR_REGISTRY_USERNAME
registryPassword: JANITOR_REGISTRY_PASSWORD
registryToken: JANITOR_REGISTRY_TOKEN
elasticsearchUsername: JANITOR_ELASTICSEARCH_USERNAME
elasticsearchPassword: JANITOR_ELASTICSEARCH_PASSWORD
elasticsearchApiKey: JANITOR_ELASTICSEARCH_API_KEY
prometheusUsername: JANITOR_PROMETHEUS_USERNAME
prometheusPassword: JANITOR_PROMETHEUS_PASSWORD
prometheusToken: JANITOR_PROMETHEUS_TOKEN
{{- end }}

{{/* The credentials whose value goes into the chart-made Secret, as key: value. */}}
{{- define "astro-janitor.madeCredentials" -}}
{{- $made := dict }}
{{- if not .Values.credentials.existingSecret }}
{{- range $entry, $variable := include "astro-janitor.credentialVariables" . | fromYaml }}
{{- $credential := index $.Values.credentials $entry }}
{{- if and (not $credential.existingSecret) $credential.value }}
{{- $_ := set $made $credential.key $credential.value }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $made }}
{{- end }}

{{/* Container env entries for the credentials, each from the Secret that holds it. */}}
{{- define "astro-janitor.credentialEnv" -}}
{{- $shared := .Values.credentials.existingSecret }}
{{- range $entry, $variable := include "astro-janitor.credentialVariables" . | fromYaml }}
{{- $credential := index $.Values.credentials $entry }}
{{- if $credential.existingSecret }}
- name: {{ $variable }}
  valueFrom:
    secretKeyRef:
      name: {{ $credential.existingSecret | quote }}
      key: {{ $credential.key | quote }}
{{- else if $shared }}
- name: {{ $variable }}
  valueFrom:
    secretKeyRef:
      name: {{ $shared | quote }}
      key: {{ $credential.key | quote }}
      optional: true
{{- else if $credential.value }}
- name: {{ $variable }}
  valueFrom:
    secretKeyRef:
      name: {{ include "astro-janitor.credentialsSecretName" $ | quote }}
      key: {{ $credential.key | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The CA bundles, each mounted as a file from a Secret or a ConfigMap: name -> values. */}}
{{- define "astro-janitor.caBundles" -}}
{{- $bundles := dict }}
{{- range $remote := list "registry" "elasticsearch" "prometheus" }}
{{- $ca := (index $.Values $remote).caBundle }}
{{- if and $ca.secretName $ca.configMapName }}
{{- fail (printf "%s.caBundle: set secretName or configMapName, not both" $remote) }}
{{- end }}
{{- if or $ca.secretName $ca.configMapName }}
{{- $_ := set $bundles $remote $ca }}
{{- end }}
{{- end }}
{{- toYaml $bundles }}
{{- end }}

{{/* The namespace of the Prometheus object read with prometheus.source kubernetes. */}}
{{- define "astro-janitor.prometheusNamespace" -}}
{{- default .Release.Namespace .Values.prometheus.namespace }}
{{- end }}

{{/*
The RBAC rule to read that object, by name only: the StatefulSet's container args or the
operator resource's spec.retention (docs/metrics.md "Kubernetes source").
*/}}
{{- define "astro-janitor.prometheusReadRule" -}}
{{- if eq .Values.prometheus.kind "prometheus" }}
- apiGroups: ["monitoring.coreos.com"]
  resources: ["prometheuses"]
{{- else }}
- apiGroups: ["apps"]
  resources: ["statefulsets"]
{{- end }}
  resourceNames: [{{ .Values.prometheus.name | quote }}]
  verbs: ["get"]
{{- end }}

{{/*
The run's own deadline: activeDeadlineSeconds less the margin, so the run ends with its
summary before Kubernetes kills the pod (README "Time limits").
*/}}
{{- define "astro-janitor.deadlineSeconds" -}}
{{- $deadline := sub (int .Values.activeDeadlineSeconds) (int .Values.deadlineMarginSeconds) -}}
{{- if lt $deadline 60 -}}
{{- fail (printf "activeDeadlineSeconds (%d) must exceed deadlineMarginSeconds (%d) by at least 60 s" (int .Values.activeDeadlineSeconds) (int .Values.deadlineMarginSeconds)) -}}
{{- end -}}
{{- $deadline -}}
{{- end -}}

{{/*
The claim holding the backups of a file:// backup.url (README "Final backups and restore"),
empty for none; the root filesystem is read-only, so a file:// store needs one.
*/}}
{{- define "astro-janitor.backupClaim" -}}
{{- $backup := .Values.backup }}
{{- if hasPrefix "file://" ($backup.url | default "") }}
{{- $claim := $backup.persistentVolumeClaim }}
{{- if $claim.existingClaim }}
{{- $claim.existingClaim }}
{{- else if $claim.create }}
{{- printf "%s-backups" (include "astro-janitor.fullname" .) }}
{{- else }}
{{- fail "backup.url file:// needs a volume: set backup.persistentVolumeClaim.existingClaim or backup.persistentVolumeClaim.create=true" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Where the backup claim is mounted: the path of the file:// backup.url. */}}
{{- define "astro-janitor.backupPath" -}}
{{- .Values.backup.url | trimPrefix "file://" | trimSuffix "/" }}
{{- end }}
