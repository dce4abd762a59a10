{{/*
One role of the cluster as a Deployment (and its PodDisruptionBudget).
Input: dict "root" $ "component" "gateway" "spec" .Values.gateway "args" (list …) "port" 8000
            "natsUser" "gateway" "redis" true "gpus" 0
*/}}
{{- define "cascade.workload" -}}
{{- $root := .root -}}
{{- $spec := .spec -}}
{{- $name := printf "%s-%s" (include "cascade.fullname" $root) .component | trunc 63 | trimSuffix "-" -}}
{{- $resources := deepCopy (default dict $spec.resources) -}}
{{- if gt (int .gpus) 0 -}}
{{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" (int .gpus)) (default dict $resources.limits)) -}}
{{- end }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "cascade.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  replicas: {{ $spec.replicas }}
  selector:
    matchLabels:
      {{- include "cascade.selectorLabels" (dict "root" $root "component" .component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "cascade.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .component }}
      annotations:
        {{- if $root.Values.metrics.prometheusAnnotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ .port | quote }}
        prometheus.io/path: /metrics
        {{- end }}
        {{- if and $root.Values.auth.enabled $root.Values.auth.createSecret }}
        checksum/auth: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum | trunc 16 | quote }}
        {{- end }}
        {{- with $spec.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "cascade.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      # roles stop gracefully on SIGTERM: actors free their sessions, coordinators finish or hand back requests
      terminationGracePeriodSeconds: 60
      containers:
        - name: {{ .container | default .component }}
          image: {{ include "cascade.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            {{- toYaml (concat .args (default list $spec.extraArgs)) | nindent 12 }}
          env:
            {{- include "cascade.natsEnv" (dict "root" $root "user" .natsUser) | nindent 12 }}
            {{- if .redis }}
            {{- include "cascade.redisEnv" $root | nindent 12 }}
            {{- end }}
            {{- if ne .component "gateway" }}
            - name: CASCADE_HEALTH_PORT
              value: {{ .port | quote }}
            {{- end }}
            {{- if and (eq .component "gateway") $root.Values.auth.enabled }}
            - name: CASCADE_API_KEYS
              valueFrom:
                secretKeyRef:
                  name: {{ $root.Values.auth.secretName }}
                  key: api-keys
            {{- end }}
            {{- with (include "cascade.otelEnv" (dict "root" $root "component" .component)) }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $spec.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: http
              containerPort: {{ .port }}
              protocol: TCP
          # model loading can take minutes on a large target: the startup probe allows 10 minutes (120 x 5 s)
          startupProbe:
            httpGet: { path: /health, port: http }
            periodSeconds: 5
            failureThreshold: 120
          readinessProbe:
            httpGet: { path: /health, port: http }
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 3
          livenessProbe:
            httpGet: { path: /live, port: http }
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 6
          resources:
            {{- toYaml $resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - { name: tmp, mountPath: /tmp }
            {{- if $root.Values.models.existingClaim }}
            - name: models
              mountPath: /app/models
              readOnly: true
              {{- with $root.Values.models.subPath }}
              subPath: {{ . }}
              {{- end }}
            {{- end }}
      volumes:
        # tsx's compile cache and ONNX Runtime scratch: the root file system is read-only
        - name: tmp
          emptyDir: { sizeLimit: 1Gi }
        {{- if $root.Values.models.existingClaim }}
        - name: models
          persistentVolumeClaim:
            claimName: {{ $root.Values.models.existingClaim }}
            readOnly: true
        {{- end }}
      {{- with $spec.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $spec.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $spec.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- if $spec.podDisruptionBudget.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  labels:
    {{- include "cascade.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- if hasKey $spec.podDisruptionBudget "minAvailable" }}
  minAvailable: {{ $spec.podDisruptionBudget.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $spec.podDisruptionBudget.maxUnavailable | default 1 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "cascade.selectorLabels" (dict "root" $root "component" .component) | nindent 6 }}
{{- end }}
{{- end -}}
