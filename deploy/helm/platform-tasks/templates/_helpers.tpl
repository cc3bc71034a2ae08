{{/*
Names. The full name prefixes every object; names are cut to 63 characters (DNS label).
*/}}
{{- define "platform-tasks.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "platform-tasks.fullname" -}}
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

{{- define "platform-tasks.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels: fixed at install, so they hold nothing that changes on upgrade (no version,
no chart). Call with (dict "root" $ "component" "worker" "queue" "email").
*/}}
{{- define "platform-tasks.selectorLabels" -}}
app.kubernetes.io/name: {{ include "platform-tasks.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .queue }}
platform-tasks.io/queue: {{ . }}
{{- end }}
{{- end -}}

{{/* Every object's labels: the selector labels plus version, chart and the common labels. */}}
{{- define "platform-tasks.labels" -}}
{{ include "platform-tasks.selectorLabels" . }}
app.kubernetes.io/part-of: platform-tasks
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "platform-tasks.chart" .root }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod template labels: the object's labels plus the marker the NetworkPolicies select on. */}}
{{- define "platform-tasks.podLabels" -}}
{{ include "platform-tasks.labels" . }}
{{- if .redisClient }}
platform-tasks.io/redis-client: "true"
{{- end }}
{{- end -}}

{{/* Image reference: repository, then @digest when given, else :tag. */}}
{{- define "platform-tasks.imageRef" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (toString (default .default .image.tag)) -}}
{{- end -}}
{{- end -}}

{{- define "platform-tasks.image" -}}
{{- include "platform-tasks.imageRef" (dict "image" .Values.image "default" .Chart.AppVersion) -}}
{{- end -}}

{{- define "platform-tasks.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "platform-tasks.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "platform-tasks.secretName" -}}
{{- default (printf "%s-auth" (include "platform-tasks.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* Names of the bundled Redis objects and its pods' DNS names. */}}
{{- define "platform-tasks.redis.fullname" -}}
{{- printf "%s-redis" (include "platform-tasks.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "platform-tasks.redis.headless" -}}
{{- printf "%s-redis-headless" (include "platform-tasks.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "platform-tasks.redis.domain" -}}
{{- printf "%s.%s.svc.%s" (include "platform-tasks.redis.headless" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* The Sentinels as a list of host:port, bundled or external. */}}
{{- define "platform-tasks.sentinelList" -}}
{{- $list := list -}}
{{- if .Values.redis.enabled -}}
{{- $name := include "platform-tasks.redis.fullname" . -}}
{{- $domain := include "platform-tasks.redis.domain" . -}}
{{- range $i := until (int .Values.redis.replicas) -}}
{{- $list = append $list (printf "%s-%d.%s:%d" $name $i $domain (int $.Values.redis.sentinelPort)) -}}
{{- end -}}
{{- else -}}
{{- $list = .Values.redis.external.sentinels -}}
{{- end -}}
{{- toJson $list -}}
{{- end -}}

{{- define "platform-tasks.sentinels" -}}
{{- include "platform-tasks.sentinelList" . | fromJsonArray | join "," -}}
{{- end -}}

{{- define "platform-tasks.masterName" -}}
{{- if .Values.redis.enabled -}}{{ .Values.redis.masterName }}{{- else -}}{{ .Values.redis.external.masterName }}{{- end -}}
{{- end -}}

{{- define "platform-tasks.redisUsername" -}}
{{- if .Values.redis.enabled -}}{{ .Values.redis.appUsername }}{{- else -}}{{ .Values.redis.external.username }}{{- end -}}
{{- end -}}

{{/* Celery task events are needed by Flower and celery-exporter only. */}}
{{- define "platform-tasks.taskEvents" -}}
{{- if or .Values.flower.enabled .Values.exporter.enabled -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{/* A settings value as an env string: integers without an exponent, booleans as true/false. */}}
{{- define "platform-tasks.envValue" -}}
{{- if and (kindIs "float64" .) (eq (floor .) .) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/*
Environment of every platform container (worker, beat, monitor, Flower, helm test): where
Redis is, the secrets by reference, then the non-secret settings. Each name is one that
src/platform_tasks/settings.py reads.
*/}}
{{- define "platform-tasks.env" -}}
- name: PLATFORM_TASKS_SENTINELS
  value: {{ include "platform-tasks.sentinels" . | quote }}
- name: PLATFORM_TASKS_SENTINEL_MASTER
  value: {{ include "platform-tasks.masterName" . | quote }}
{{- with include "platform-tasks.redisUsername" . }}
- name: PLATFORM_TASKS_REDIS_USERNAME
  value: {{ . | quote }}
{{- end }}
- name: PLATFORM_TASKS_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "platform-tasks.secretName" . }}
      key: redis-password
{{- if or .Values.redis.enabled .Values.auth.sentinelPassword .Values.auth.existingSecret }}
- name: PLATFORM_TASKS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "platform-tasks.secretName" . }}
      key: sentinel-password
      {{- if not .Values.redis.enabled }}
      optional: true
      {{- end }}
{{- end }}
{{- if .Values.tls.enabled }}
- name: PLATFORM_TASKS_REDIS_TLS
  value: "true"
{{- if .Values.tls.caSecret }}
- name: PLATFORM_TASKS_REDIS_TLS_CA_FILE
  value: /etc/platform-tasks/tls/{{ .Values.tls.caKey }}
{{- end }}
{{- end }}
{{- if or .Values.auth.smtpPassword .Values.auth.existingSecret }}
- name: PLATFORM_TASKS_SMTP_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "platform-tasks.secretName" . }}
      key: smtp-password
      optional: true
{{- end }}
{{- range $key, $value := .Values.settings }}
{{- if not (or (kindIs "invalid" $value) (eq (toString $value) "")) }}
- name: PLATFORM_TASKS_{{ $key | snakecase | upper }}
  value: {{ include "platform-tasks.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volumes every platform pod has: a writable /tmp, and the Redis CA when TLS is on. */}}
{{- define "platform-tasks.volumes" -}}
- name: tmp
  emptyDir: {}
{{- if and .Values.tls.enabled .Values.tls.caSecret }}
- name: redis-ca
  secret:
    secretName: {{ .Values.tls.caSecret }}
{{- end }}
{{- end -}}

{{- define "platform-tasks.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if and .Values.tls.enabled .Values.tls.caSecret }}
- name: redis-ca
  mountPath: /etc/platform-tasks/tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* Pod and container security contexts: Pod Security "restricted" for every container. */}}
{{- define "platform-tasks.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .gid }}
fsGroup: {{ .gid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "platform-tasks.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .gid }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Pod settings shared by every platform pod. */}}
{{- define "platform-tasks.podCommon" -}}
serviceAccountName: {{ include "platform-tasks.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "platform-tasks.podSecurityContext" (dict "uid" .Values.runAsUser "gid" .Values.runAsGroup) | nindent 2 }}
{{- end -}}

{{/*
The workers, one entry per enabled queue: workerDefaults deep-merged under each workers entry.
Returned as YAML; read it with fromYaml.
*/}}
{{- define "platform-tasks.workers" -}}
{{- $out := dict -}}
{{- range $queue, $worker := .Values.workers -}}
{{- $merged := mergeOverwrite (deepCopy $.Values.workerDefaults) (deepCopy (default dict $worker)) -}}
{{- if $merged.enabled -}}
{{- $_ := set $out $queue $merged -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Checks that need more than the schema: run by every template that depends on them. */}}
{{- define "platform-tasks.validate" -}}
{{- if .Values.redis.enabled -}}
{{- if gt (int .Values.redis.quorum) (int .Values.redis.replicas) -}}
{{- fail (printf "redis.quorum (%d) cannot exceed redis.replicas (%d): the Sentinels could never agree" (int .Values.redis.quorum) (int .Values.redis.replicas)) -}}
{{- end -}}
{{- if ge (int .Values.redis.minReplicasToWrite) (int .Values.redis.replicas) -}}
{{- fail (printf "redis.minReplicasToWrite (%d) must be below redis.replicas (%d), or the master refuses every write" (int .Values.redis.minReplicasToWrite) (int .Values.redis.replicas)) -}}
{{- end -}}
{{- if .Values.tls.enabled -}}
{{- fail "tls.enabled needs redis.external: the bundled Redis serves plain text inside the namespace (protected by the NetworkPolicies)" -}}
{{- end -}}
{{- else if not .Values.redis.external.sentinels -}}
{{- fail "redis.enabled is false: set redis.external.sentinels (host:port of each Sentinel)" -}}
{{- end -}}
{{- end -}}
