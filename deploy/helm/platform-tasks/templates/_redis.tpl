{{/* Environment of the Redis pods' containers: what init.sh and probe.sh read. */}}
{{- define "platform-tasks.redis.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: STATEFULSET
  value: {{ include "platform-tasks.redis.fullname" . | quote }}
- name: HEADLESS_SERVICE
  value: {{ include "platform-tasks.redis.headless" . | quote }}
- name: CLUSTER_DOMAIN
  value: {{ .Values.clusterDomain | quote }}
- name: REPLICAS
  value: {{ .Values.redis.replicas | quote }}
- name: MASTER_NAME
  value: {{ .Values.redis.masterName | quote }}
- name: QUORUM
  value: {{ .Values.redis.quorum | quote }}
- name: REDIS_PORT
  value: {{ .Values.redis.port | quote }}
- name: SENTINEL_PORT
  value: {{ .Values.redis.sentinelPort | quote }}
- name: APP_USERNAME
  value: {{ .Values.redis.appUsername | quote }}
- name: APP_RULES
  value: {{ .Values.redis.appRules | quote }}
- name: DOWN_AFTER_MS
  value: {{ .Values.redis.downAfterMilliseconds | quote }}
- name: FAILOVER_TIMEOUT_MS
  value: {{ .Values.redis.failoverTimeoutMilliseconds | quote }}
- name: SECRETS_DIR
  value: /etc/redis-secrets
- name: BASE_CONFIG
  value: /etc/redis-base/redis.conf
- name: CONFIG_DIR
  value: /run/redis
{{- end -}}

{{- define "platform-tasks.redis.mounts" -}}
- name: config
  mountPath: /run/redis
- name: base-config
  mountPath: /etc/redis-base
  readOnly: true
- name: scripts
  mountPath: /etc/redis-scripts
  readOnly: true
- name: secrets
  mountPath: /etc/redis-secrets
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}
