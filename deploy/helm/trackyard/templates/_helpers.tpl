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
envFrom:
  {{- if .Values.storeKeysInSecret.enabled }}
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
{{- if .Values.serviceAccount.create }}
serviceAccountName: {{ .Values.serviceAccount.name | default (include "trackyard.fullname" .) }}
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

{{- define "trackyard.keyList" -}}
{{- $pairs := list -}}
{{- range $k, $v := .Values.storeKeysInSecret.keys -}}
{{- $pairs = append $pairs (printf "%s: %s" $k $v) -}}
{{- end -}}
{{- join ", " $pairs -}}
{{- end -}}
