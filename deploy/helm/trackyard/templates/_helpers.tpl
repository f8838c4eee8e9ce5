{{- define "trackyard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "trackyard.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "trackyard.keysSecret" -}}
{{- if .Values.storeKeysInSecret.existingSecret -}}
{{ .Values.storeKeysInSecret.existingSecret }}
{{- else -}}
{{ include "trackyard.fullname" . }}-keys
{{- end -}}
{{- end -}}

{{/* Container parts every service shares: config mount, keys, metrics port. */}}
{{- define "trackyard.common" -}}
{{- if .Values.storeKeysInSecret.enabled }}
envFrom:
  - secretRef: {name: {{ include "trackyard.keysSecret" . }}}
{{- end }}
volumeMounts: [{name: config, mountPath: /etc/trackyard}]
{{- with .Values.securityContext }}
securityContext: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "trackyard.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with include "trackyard.serviceAccountName" . }}
serviceAccountName: {{ . }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
volumes: [{name: config, configMap: {name: {{ include "trackyard.fullname" . }}-config}}]
{{- end -}}

{{/* The pods' service account: the chart's own (serviceAccount.create), else an existing
one named by serviceAccount.name, else the namespace's default (nothing rendered). */}}
{{- define "trackyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default (include "trackyard.fullname" .) }}
{{- else -}}
{{ .Values.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{/* LIVEKIT_KEYS of the chart's Secret: storeKeysInSecret.keys, else livekit.keys (moved out
of the ConfigMap). */}}
{{- define "trackyard.keyList" -}}
{{- $keys := .Values.storeKeysInSecret.keys | default .Values.livekit.keys -}}
{{- if not $keys -}}
{{- fail "storeKeysInSecret: set storeKeysInSecret.keys (or livekit.keys), or an existingSecret" -}}
{{- end -}}
{{- $pairs := list -}}
{{- range $k, $v := $keys -}}
{{- $pairs = append $pairs (printf "%s: %s" $k $v) -}}
{{- end -}}
{{- join ", " $pairs -}}
{{- end -}}


{{/* Replicas of the signal edges and routers: the HPA's to set when autoscaling (a value here
would reset them to minReplicas at every upgrade), else autoscaling.minReplicas. */}}
{{- define "trackyard.replicas" -}}
{{- if not .Values.autoscaling.enabled -}}
replicas: {{ .Values.autoscaling.minReplicas }}
{{- end -}}
{{- end -}}
