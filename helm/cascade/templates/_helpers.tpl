{{/* The release's full name, at most 63 characters. */}}
{{- define "cascade.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "cascade.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cascade-cluster
{{- end -}}

{{/* Selector labels of one workload: dict "root" $ "component" "gateway" */}}
{{- define "cascade.selectorLabels" -}}
app.kubernetes.io/name: {{ default .root.Chart.Name .root.Values.nameOverride }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cascade.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cascade.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "cascade.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The NATS URL: the bundled chart's service, or external.natsUrl. */}}
{{- define "cascade.natsUrl" -}}
{{- if .Values.nats.enabled -}}
{{- $name := "nats" -}}
{{- if contains $name .Release.Name -}}
{{- printf "nats://%s:4222" (.Release.Name | trunc 63 | trimSuffix "-") -}}
{{- else -}}
{{- printf "nats://%s-%s:4222" .Release.Name $name | trunc 70 -}}
{{- end -}}
{{- else -}}
{{- required "external.natsUrl is required when nats.enabled is false" .Values.external.natsUrl -}}
{{- end -}}
{{- end -}}

{{/* The Redis URL (CASCADE_REDIS_URL): the bundled Valkey's service, external.redisUrls' one server, or with external.redisCluster a redis+cluster:// URL of its seed nodes. */}}
{{- define "cascade.redisUrls" -}}
{{- if .Values.valkey.enabled -}}
{{- $name := "valkey" -}}
{{- if contains $name .Release.Name -}}
{{- printf "redis://%s:6379" (.Release.Name | trunc 63 | trimSuffix "-") -}}
{{- else -}}
{{- printf "redis://%s-%s:6379" .Release.Name $name -}}
{{- end -}}
{{- else -}}
{{- if not .Values.external.redisUrls -}}
{{- fail "external.redisUrls is required when valkey.enabled is false" -}}
{{- end -}}
{{- if .Values.external.redisCluster -}}
{{- $seeds := list -}}
{{- range .Values.external.redisUrls -}}
{{- $seeds = append $seeds (regexReplaceAll "^rediss?://" . "") -}}
{{- end -}}
{{- printf "%s://%s" (ternary "rediss+cluster" "redis+cluster" (.Values.external.redisTls | default false)) (join "," $seeds) -}}
{{- else if gt (len .Values.external.redisUrls) 1 -}}
{{- fail (printf "external.redisUrls holds %d URLs: set external.redisCluster=true to use them as a Redis Cluster's seed nodes (sharding over independent servers is not supported)" (len .Values.external.redisUrls)) -}}
{{- else -}}
{{- first .Values.external.redisUrls -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* NATS credentials of a role from the Secret: dict "root" $ "user" "actor" */}}
{{- define "cascade.natsEnv" -}}
- name: CASCADE_NATS_URL
  value: {{ include "cascade.natsUrl" .root | quote }}
{{- if .root.Values.auth.enabled }}
- name: CASCADE_NATS_USER
  value: {{ .user }}
- name: CASCADE_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.auth.secretName }}
      key: nats-{{ .user }}-password
{{- end }}
{{- end -}}

{{- define "cascade.redisEnv" -}}
- name: CASCADE_REDIS_URL
  value: {{ include "cascade.redisUrls" . | quote }}
{{- if .Values.auth.enabled }}
{{- if and (not .Values.valkey.enabled) .Values.external.redisUser }}
- name: CASCADE_REDIS_USER
  value: {{ .Values.external.redisUser | quote }}
{{- end }}
- name: CASCADE_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.auth.secretName }}
      key: redis-password
{{- end }}
{{- end -}}

{{- define "cascade.otelEnv" -}}
{{- if .root.Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .root.Values.otel.endpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "cascade-%s" .component | quote }}
{{- if .root.Values.otel.resourceAttributes }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ .root.Values.otel.resourceAttributes | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Refuses combinations that would leave a part of the cluster without the authentication the others expect. */}}
{{- define "cascade.validate" -}}
{{- if and (not .Values.auth.enabled) (or .Values.nats.enabled .Values.valkey.enabled) -}}
{{- fail "auth.enabled=false works only with external NATS and Redis (nats.enabled=false, valkey.enabled=false): the bundled NATS and Valkey always run with authentication" -}}
{{- end -}}
{{- if and .Values.auth.enabled .Values.valkey.enabled (ne .Values.valkey.auth.usersExistingSecret .Values.auth.secretName) -}}
{{- fail (printf "valkey.auth.usersExistingSecret (%s) must name auth.secretName (%s)" .Values.valkey.auth.usersExistingSecret .Values.auth.secretName) -}}
{{- end -}}
{{- $names := list -}}
{{- range .Values.drafters -}}
{{- if has .model $names -}}
{{- fail (printf "drafters lists %s twice: one entry per drafter model (scale it with replicas)" .model) -}}
{{- end -}}
{{- $names = append $names .model -}}
{{- if has (lower .model) (list "gateway" "coordinator" "verifier") -}}
{{- fail (printf "drafters: a model named %s would clash with the %s workload" .model (lower .model)) -}}
{{- end -}}
{{- if and (ne .kv.policy "full") (lt (int .kv.budget) 1) -}}
{{- fail (printf "drafters[%s].kv.policy %s needs kv.budget >= 1" .model .kv.policy) -}}
{{- end -}}
{{- end -}}
{{- end -}}
