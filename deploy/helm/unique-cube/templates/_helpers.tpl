{{/* Names and labels. */}}

{{- define "unique-cube.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "unique-cube.fullname" -}}
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
The DaskCluster's name. The operator derives "<name>-scheduler", "<name>-default" and
"<name>-gpu-worker-<10 hex>" from it, and label values stay under 63 characters.
*/}}
{{- define "unique-cube.daskClusterName" -}}
{{- printf "%s-dask" (include "unique-cube.fullname" . | trunc 30 | trimSuffix "-") }}
{{- end }}

{{/* The scheduler Service the operator creates for the DaskCluster, as a Dask address. */}}
{{- define "unique-cube.schedulerAddress" -}}
{{- printf "tcp://%s-scheduler.%s.svc:8786" (include "unique-cube.daskClusterName" .) .Release.Namespace }}
{{- end }}

{{/*
"true" in operator mode with dask.scaleToZero (the runner scales the worker groups), else "".
*/}}
{{- define "unique-cube.scaleToZero" -}}
{{- if and (eq .Values.dask.mode "operator") .Values.dask.scaleToZero }}true{{ end }}
{{- end }}

{{/* Checks across values that the schema cannot express; fails the render with the fix. */}}
{{- define "unique-cube.checks" -}}
{{- if and (eq .Values.dask.mode "operator") (not .Values.persistence.existingClaim) }}
{{- fail "dask.mode=operator needs persistence.existingClaim: a ReadWriteMany PersistentVolumeClaim (created outside the chart) for the pipeline's outputs and models; the root filesystem is read-only, so without it the run and the workers have nowhere to write (e.g. --set persistence.existingClaim=unique-cube-data)" }}
{{- end }}
{{- if and (include "unique-cube.scaleToZero" .) (not .Values.rbac.create) }}
{{- fail "dask.scaleToZero needs rbac.create: the runner scales its worker groups through the Role (or set dask.scaleToZero=false)" }}
{{- end }}
{{- end }}

{{- define "unique-cube.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "unique-cube.selectorLabels" -}}
app.kubernetes.io/name: {{ include "unique-cube.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "unique-cube.labels" -}}
helm.sh/chart: {{ include "unique-cube.chart" . }}
{{ include "unique-cube.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "unique-cube.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "unique-cube.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image of a variant: (dict "root" $ "cuda" true|false). */}}
{{- define "unique-cube.image" -}}
{{- $image := .root.Values.image }}
{{- $tag := default .root.Chart.AppVersion $image.tag }}
{{- $suffix := ternary $image.cudaSuffix $image.cpuSuffix .cuda }}
{{- printf "%s:%s%s" $image.repository $tag $suffix }}
{{- end }}

{{/*
Requests and limits with every quantity quoted: the Dask CRDs type quantities as strings.
(dict "resources" .resources "gpus" N) adds an nvidia.com/gpu limit when N > 0.
*/}}
{{- define "unique-cube.resources" -}}
{{- $out := dict }}
{{- range $kind, $quantities := default dict .resources }}
{{- $quoted := dict }}
{{- range $name, $quantity := $quantities }}
{{- $_ := set $quoted $name (toString $quantity) }}
{{- end }}
{{- $_ := set $out $kind $quoted }}
{{- end }}
{{- if gt (int (default 0 .gpus)) 0 }}
{{- $limits := default dict $out.limits }}
{{- $_ := set $limits "nvidia.com/gpu" (toString (int .gpus)) }}
{{- $_ := set $out "limits" $limits }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* Pod-level security: non-root, the runtime's seccomp profile. */}}
{{- define "unique-cube.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
fsGroup: {{ .Values.podSecurityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security: read-only root filesystem; scratch and /tmp are emptyDirs. */}}
{{- define "unique-cube.securityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{/*
Environment of a unique-cube container: (dict "root" $ "scheduler" BOOL "secrets" BOOL).
"scheduler" adds DASK_SCHEDULER_ADDRESS (the runner in operator mode). Secrets, only by
reference, reach only the pods that read inputs or write outputs ("secrets": the runner and
the Dask workers; not the scheduler nor the helm test pod).
*/}}
{{- define "unique-cube.env" -}}
{{- $values := .root.Values }}
{{- if .scheduler }}
- name: DASK_SCHEDULER_ADDRESS
  value: {{ include "unique-cube.schedulerAddress" .root | quote }}
{{- else }}
# Local mode: the runner's own LocalCluster serves the dashboard to the dashboard Service.
- name: UNIQUE_CUBE_DASHBOARD_ADDRESS
  value: "0.0.0.0:8787"
{{- end }}
{{- $secrets := .secrets }}
{{- with and $secrets $values.secrets.planetaryComputer.secretName }}
- name: PC_SDK_SUBSCRIPTION_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $values.secrets.planetaryComputer.key }}
{{- end }}
{{- range $values.extraEnv }}
{{- if or $secrets (not (and .valueFrom .valueFrom.secretKeyRef)) }}
{{ list . | toYaml }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The runner's metrics (unique_cube.product.metrics): the endpoint's port on every interface
of the pod, and the Pushgateway with a job per kind of run: (dict "root" $ "component" NAME).
*/}}
{{- define "unique-cube.metricsEnv" -}}
{{- $metrics := .root.Values.metrics }}
{{- if $metrics.enabled }}
- name: UNIQUE_CUBE_METRICS_PORT
  value: {{ printf "0.0.0.0:%d" (int $metrics.port) | quote }}
{{- end }}
{{- with $metrics.pushgateway }}
- name: UNIQUE_CUBE_METRICS_PUSH
  value: {{ . | quote }}
- name: UNIQUE_CUBE_METRICS_JOB
  value: {{ printf "%s-%s" (include "unique-cube.fullname" $.root) $.component | quote }}
{{- end }}
{{- end }}

{{/* envFrom of a unique-cube container: (dict "root" $ "secrets" BOOL), as for the env. */}}
{{- define "unique-cube.envFrom" -}}
- configMapRef:
    name: {{ include "unique-cube.fullname" .root }}-env
{{- with and .secrets .root.Values.secrets.objectStore.secretName }}
- secretRef:
    name: {{ . }}
{{- end }}
{{- $secrets := .secrets }}
{{- range .root.Values.extraEnvFrom }}
{{- if or $secrets (not .secretRef) }}
{{ list . | toYaml }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes of every unique-cube pod; (dict "root" $ "pipeline" true) adds the pipeline. */}}
{{- define "unique-cube.volumes" -}}
{{- $values := .root.Values -}}
- name: scratch
  emptyDir:
    sizeLimit: {{ $values.scratch.sizeLimit }}
- name: tmp
  emptyDir:
    sizeLimit: {{ $values.scratch.tmpSizeLimit }}
- name: dask-config
  configMap:
    name: {{ include "unique-cube.fullname" .root }}-dask
{{- if .pipeline }}
- name: pipeline
  configMap:
    name: {{ include "unique-cube.fullname" .root }}-pipeline
{{- end }}
{{- if .scaler }}
- name: dask-workers
  configMap:
    name: {{ include "unique-cube.fullname" .root }}-dask-workers
{{- end }}
{{- with $values.persistence.existingClaim }}
- name: data
  persistentVolumeClaim:
    claimName: {{ . }}
{{- end }}
{{- with $values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "unique-cube.volumeMounts" -}}
{{- $values := .root.Values -}}
- name: scratch
  mountPath: /scratch
- name: tmp
  mountPath: /tmp
- name: dask-config
  mountPath: /etc/dask
  readOnly: true
{{- if .pipeline }}
- name: pipeline
  mountPath: /etc/unique-cube
  readOnly: true
{{- end }}
{{- if .scaler }}
- name: dask-workers
  mountPath: /opt/unique-cube
  readOnly: true
{{- end }}
{{- if $values.persistence.existingClaim }}
- name: data
  mountPath: {{ $values.persistence.mountPath }}
  {{- with $values.persistence.subPath }}
  subPath: {{ . }}
  {{- end }}
{{- end }}
{{- with $values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Scheduling keys shared by every component: (dict "component" .Values.runner). */}}
{{- define "unique-cube.scheduling" -}}
{{- with .component.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .component.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .component.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "unique-cube.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The runner pod (CronJob and backfill Job): (dict "root" $ "args" LIST "component" NAME).
In operator mode it is the Dask client of the DaskCluster; in local mode it starts a
LocalCluster and serves its dashboard on 8787.
*/}}
{{- define "unique-cube.runnerPodTemplate" -}}
{{- $root := .root }}
{{- $values := $root.Values }}
{{- $operator := eq $values.dask.mode "operator" }}
{{- $gpus := ternary 0 (int $values.dask.local.gpus) $operator }}
{{- $scaler := include "unique-cube.scaleToZero" $root }}
{{- $args := .args }}
{{- if $scaler }}
{{- $cluster := include "unique-cube.daskClusterName" $root }}
{{- $dask := $values.dask }}
{{- $wrapper := list "python" "/opt/unique-cube/dask_workers.py" }}
{{- $wrapper = concat $wrapper (list "--scale" (printf "daskclusters/%s=%d" $cluster (int $dask.cpuWorkers.replicas))) }}
{{- if $dask.gpuWorkers.enabled }}
{{- $wrapper = concat $wrapper (list "--scale" (printf "daskworkergroups/%s-gpu=%d" $cluster (int $dask.gpuWorkers.replicas))) }}
{{- end }}
{{- $selector := printf "app.kubernetes.io/instance=%s,app.kubernetes.io/component=runner" $root.Release.Name }}
{{- $wrapper = concat $wrapper (list "--runners" $selector "--wait" (toString (int $dask.workerWaitSeconds)) "--") }}
{{- $args = concat $wrapper .args }}
{{- end }}
{{- $metrics := $values.metrics }}
{{- $annotations := dict }}
{{- if $metrics.enabled }}
{{- $annotations = dict "prometheus.io/scrape" "true" "prometheus.io/port" (toString (int $metrics.port)) "prometheus.io/path" "/metrics" }}
{{- end }}
{{- $annotations = mergeOverwrite $annotations (default dict $values.runner.podAnnotations) -}}
metadata:
  labels:
    {{- include "unique-cube.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: runner
    unique-cube/run: {{ .component }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  restartPolicy: Never
  serviceAccountName: {{ include "unique-cube.serviceAccountName" $root }}
  automountServiceAccountToken: {{ and $operator $values.rbac.create }}
  {{- with include "unique-cube.imagePullSecrets" $root }}
  {{- . | nindent 2 }}
  {{- end }}
  securityContext:
    {{- include "unique-cube.podSecurityContext" $root | nindent 4 }}
  {{- with include "unique-cube.scheduling" (dict "component" $values.runner) | trim }}
  {{- . | nindent 2 }}
  {{- end }}
  containers:
    - name: unique-cube
      image: {{ include "unique-cube.image" (dict "root" $root "cuda" (gt $gpus 0)) }}
      imagePullPolicy: {{ $values.image.pullPolicy }}
      args:
        {{- toYaml $args | nindent 8 }}
      {{- if $values.persistence.existingClaim }}
      workingDir: {{ $values.persistence.mountPath }}
      {{- end }}
      {{- if or (not $operator) $metrics.enabled }}
      ports:
        {{- if not $operator }}
        - name: http-dashboard
          containerPort: 8787
          protocol: TCP
        {{- end }}
        {{- if $metrics.enabled }}
        - name: http-metrics
          containerPort: {{ $metrics.port }}
          protocol: TCP
        {{- end }}
      {{- end }}
      {{- with include "unique-cube.env" (dict "root" $root "scheduler" $operator "secrets" true) | trim }}
      env:
        {{- . | nindent 8 }}
        {{- with include "unique-cube.metricsEnv" (dict "root" $root "component" $.component) | trim }}
        {{- . | nindent 8 }}
        {{- end }}
      {{- end }}
      envFrom:
        {{- include "unique-cube.envFrom" (dict "root" $root "secrets" true) | nindent 8 }}
      resources:
        {{- include "unique-cube.resources" (dict "resources" $values.runner.resources "gpus" $gpus) | nindent 8 }}
      securityContext:
        {{- include "unique-cube.securityContext" $root | nindent 8 }}
      volumeMounts:
        {{- include "unique-cube.volumeMounts" (dict "root" $root "pipeline" true "scaler" $scaler) | nindent 8 }}
  volumes:
    {{- include "unique-cube.volumes" (dict "root" $root "pipeline" true "scaler" $scaler) | nindent 4 }}
{{- end }}

{{/* Pod-level keys of a Dask pod (operator mode): (dict "root" $ "component" VALUES). */}}
{{- define "unique-cube.daskPodSpec" -}}
serviceAccountName: {{ include "unique-cube.serviceAccountName" .root }}
automountServiceAccountToken: false
{{- include "unique-cube.imagePullSecrets" .root }}
securityContext:
  {{- include "unique-cube.podSecurityContext" .root | nindent 2 }}
{{- include "unique-cube.scheduling" (dict "component" .component) }}
volumes:
  {{- include "unique-cube.volumes" (dict "root" .root "pipeline" false) | nindent 2 }}
{{- end }}

{{/*
Container keys shared by the scheduler and the workers:
(dict "root" $ "resources" R "gpus" N "secrets" BOOL); only the workers need the secrets.
*/}}
{{- define "unique-cube.daskContainer" -}}
{{- with include "unique-cube.env" (dict "root" .root "scheduler" false "secrets" .secrets) | trim }}
env:
  {{- . | nindent 2 }}
{{- end }}
envFrom:
  {{- include "unique-cube.envFrom" (dict "root" .root "secrets" .secrets) | nindent 2 }}
resources:
  {{- include "unique-cube.resources" (dict "resources" .resources "gpus" .gpus) | nindent 2 }}
securityContext:
  {{- include "unique-cube.securityContext" .root | nindent 2 }}
volumeMounts:
  {{- include "unique-cube.volumeMounts" (dict "root" .root "pipeline" false) | nindent 2 }}
{{- if .root.Values.persistence.existingClaim }}
workingDir: {{ .root.Values.persistence.mountPath }}
{{- end }}
{{- end }}

{{/*
Probes of a Dask worker: its HTTP server's /health on the worker dashboard port. Liveness is
lenient: a worker busy in a GIL-holding task (the GPU sampler) may answer late.
*/}}
{{- define "unique-cube.workerProbes" -}}
readinessProbe:
  httpGet:
    port: http-dashboard
    path: /health
  initialDelaySeconds: 5
  periodSeconds: 10
  timeoutSeconds: 5
livenessProbe:
  httpGet:
    port: http-dashboard
    path: /health
  initialDelaySeconds: 30
  periodSeconds: 30
  timeoutSeconds: 10
  failureThreshold: 6
{{- end }}
