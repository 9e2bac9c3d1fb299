{{/* Names */}}
{{- define "ragcluster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ragcluster.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ragcluster.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ragcluster.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels: standard labels on every object; selector labels = name + instance (+ component). */}}
{{- define "ragcluster.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "ragcluster.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ragcluster
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ragcluster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ragcluster.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Component selector: (dict "root" $ "component" "router") */}}
{{- define "ragcluster.componentSelector" -}}
{{ include "ragcluster.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Image reference: (dict "root" $ "image" .Values.router.image) */}}
{{- define "ragcluster.image" -}}
{{- $repo := .image.repository -}}
{{- if .root.Values.image.registry -}}{{- $repo = printf "%s/%s" .root.Values.image.registry $repo -}}{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (required "an image tag or digest is required" .image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/* Shard names: (dict "root" $ "shard" N) */}}
{{- define "ragcluster.shardName" -}}
{{- printf "%s-shard-%d" (include "ragcluster.fullname" .root) (int .shard) -}}
{{- end -}}

{{/* A shard replica's stable address through its headless Service, host:port:
     <sts>-<r>.<sts>.<ns>.svc.<domain>:<port>. (dict "root" $ "shard" N "replica" R) */}}
{{- define "ragcluster.shardReplicaAddress" -}}
{{- $sts := include "ragcluster.shardName" (dict "root" .root "shard" .shard) -}}
{{- printf "%s-%d.%s.%s.svc.%s:%d" $sts (int .replica) $sts .root.Release.Namespace .root.Values.clusterDomain (int .root.Values.shards.port) -}}
{{- end -}}

{{/* RAGCLUSTER_SHARD for the router: every replica by its stable per-pod DNS name, re-resolved every
     dnsRefreshSeconds, so a pod that comes back with a new IP is reached without restarting the router:
     0=dns:///<sts>-0.<svc>.<ns>.svc.<domain>:<port>,dns:///<sts>-1...;1=... */}}
{{- define "ragcluster.shardSpec" -}}
{{- $root := . -}}
{{- $shards := list -}}
{{- range $i := until (int .Values.shards.count) -}}
{{- $addrs := list -}}
{{- range $r := until (int $root.Values.shards.replicas) -}}
{{- $addrs = append $addrs (printf "dns:///%s" (include "ragcluster.shardReplicaAddress" (dict "root" $root "shard" $i "replica" $r))) -}}
{{- end -}}
{{- $shards = append $shards (printf "%d=%s" $i (join "," $addrs)) -}}
{{- end -}}
{{- /* always ";"-terminated: the env list is then split on ";" even for one shard with replicas "0=a,b" */ -}}
{{- printf "%s;" (join ";" $shards) -}}
{{- end -}}

{{- define "ragcluster.routerAddress" -}}
{{- printf "%s-router.%s.svc.%s:%d" (include "ragcluster.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.router.service.port) -}}
{{- end -}}

{{/* Environment shared by every server */}}
{{- define "ragcluster.serverEnv" -}}
- name: RAGCLUSTER_HOST
  value: "0.0.0.0"
- name: RAGCLUSTER_LOG_JSON
  value: {{ .Values.logJson | quote }}
- name: RAGCLUSTER_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- end -}}

{{/* Native gRPC probes on grpc.health.v1: (dict "port" N "probes" .Values.router) */}}
{{- define "ragcluster.grpcProbes" -}}
startupProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: {{ .probes.startupProbe.periodSeconds }}
  failureThreshold: {{ .probes.startupProbe.failureThreshold }}
livenessProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: {{ .probes.livenessProbe.periodSeconds }}
  timeoutSeconds: {{ .probes.livenessProbe.timeoutSeconds }}
  failureThreshold: {{ .probes.livenessProbe.failureThreshold }}
readinessProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: {{ .probes.readinessProbe.periodSeconds }}
  timeoutSeconds: {{ .probes.readinessProbe.timeoutSeconds }}
  failureThreshold: {{ .probes.readinessProbe.failureThreshold }}
{{- end -}}

{{/* Policy skips for checkov, with the reason, on every workload (checkov reads these annotations:
     ID=reason, the reason holding no further "="). Listed in the README too. */}}
{{- define "ragcluster.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_43=images are referenced by tag by default; set the component's image.digest to pin one
checkov.io/skip2: CKV_K8S_15=pull policy IfNotPresent lets kind and air-gapped clusters use side-loaded images; set image.pullPolicy to Always where a registry is always reachable
{{- end -}}

{{- define "ragcluster.podSpecCommon" -}}
serviceAccountName: {{ include "ragcluster.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* --- Transport security and API keys ---------------------------------------------------------------- */}}

{{/* Refuse combinations the servers would refuse at start. */}}
{{- define "ragcluster.checkSecurity" -}}
{{- if and .Values.tls.enabled (not .Values.auth.enabled) -}}
{{- fail "auth.enabled=false with tls.enabled=true: the router refuses a non-loopback address without API keys unless it runs --insecure, which also turns TLS off; set tls.enabled=false too to run without both on purpose" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.certManager.enabled) -}}
{{- if not (and .Values.tls.existingSecrets.router .Values.tls.existingSecrets.shardPrefix) -}}
{{- fail "tls.certManager.enabled=false needs tls.existingSecrets.router and tls.existingSecrets.shardPrefix (and .generator when generators.enabled)" -}}
{{- end -}}
{{- if and .Values.generators.enabled (not .Values.tls.existingSecrets.generator) -}}
{{- fail "tls.certManager.enabled=false needs tls.existingSecrets.generator when generators.enabled" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.tls.enabled .Values.auth.existingSecret (not .Values.auth.clientTokenSecret) -}}
{{- fail "auth.existingSecret needs auth.clientTokenSecret: a Secret with key `token` holding a write key for the chart's ingest Job and helm test" -}}
{{- end -}}
{{- end -}}

{{/* The TLS Secret of a tier: (dict "root" $ "tier" "router"|"generator"|"shard" "shard" N) */}}
{{- define "ragcluster.tlsSecret" -}}
{{- $tls := .root.Values.tls -}}
{{- if eq .tier "shard" -}}
{{- if $tls.certManager.enabled -}}
{{- printf "%s-tls" (include "ragcluster.shardName" (dict "root" .root "shard" .shard)) -}}
{{- else -}}
{{- printf "%s-%d" $tls.existingSecrets.shardPrefix (int .shard) -}}
{{- end -}}
{{- else if $tls.certManager.enabled -}}
{{- printf "%s-%s-tls" (include "ragcluster.fullname" .root) .tier -}}
{{- else -}}
{{- index $tls.existingSecrets .tier -}}
{{- end -}}
{{- end -}}

{{/* Server environment for TLS: (dict "root" $) */}}
{{- define "ragcluster.tlsEnv" -}}
{{- $tls := .root.Values.tls -}}
{{- if $tls.enabled }}
- name: RAGCLUSTER_TLS_CERT
  value: {{ printf "%s/tls.crt" $tls.mountPath | quote }}
- name: RAGCLUSTER_TLS_KEY
  value: {{ printf "%s/tls.key" $tls.mountPath | quote }}
- name: RAGCLUSTER_TLS_CA
  value: {{ include "ragcluster.trustedCA" .root | quote }}
- name: RAGCLUSTER_TLS_SERVER_NAME
  value: {{ $tls.internalServerName | quote }}
- name: RAGCLUSTER_MAX_CONNECTION_AGE_SECONDS
  value: {{ $tls.maxConnectionAgeSeconds | quote }}
- name: RAGCLUSTER_HEALTH_PORT
  value: {{ $tls.healthPort | quote }}
{{- else }}
- name: RAGCLUSTER_INSECURE
  value: "true"
{{- end }}
{{- end -}}

{{/* The port the kubelet probes: the plaintext health port with TLS, else the gRPC port. (dict "root" $ "port" N) */}}
{{- define "ragcluster.probePort" -}}
{{- if .root.Values.tls.enabled -}}{{ .root.Values.tls.healthPort }}{{- else -}}{{ .port }}{{- end -}}
{{- end -}}

{{- define "ragcluster.healthContainerPort" -}}
{{- if .Values.tls.enabled }}
- name: health
  containerPort: {{ .Values.tls.healthPort }}
  protocol: TCP
{{- end }}
{{- end -}}

{{/* The CA file every server and client trusts: the tier Secret's ca.crt, or with tls.trustBundle.configMap
     the bundle (e.g. trust-manager's, holding the old and the new CA during a CA change). */}}
{{- define "ragcluster.trustedCA" -}}
{{- if .Values.tls.trustBundle.configMap -}}
{{- printf "%s/ca.crt" .Values.tls.trustBundle.mountPath -}}
{{- else -}}
{{- printf "%s/ca.crt" .Values.tls.mountPath -}}
{{- end -}}
{{- end -}}

{{- define "ragcluster.trustBundleMount" -}}
{{- if and .Values.tls.enabled .Values.tls.trustBundle.configMap }}
- name: trust-bundle
  mountPath: {{ .Values.tls.trustBundle.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "ragcluster.trustBundleVolume" -}}
{{- if and .Values.tls.enabled .Values.tls.trustBundle.configMap }}
- name: trust-bundle
  configMap:
    name: {{ .Values.tls.trustBundle.configMap }}
    items:
      - key: {{ .Values.tls.trustBundle.key }}
        path: ca.crt
{{- end }}
{{- end -}}

{{- define "ragcluster.tlsMount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ .Values.tls.mountPath }}
  readOnly: true
{{- end }}
{{- include "ragcluster.trustBundleMount" . }}
{{- end -}}

{{/* The certificate volume: (dict "root" $ "tier" ... "shard" N) */}}
{{- define "ragcluster.tlsVolume" -}}
{{- if .root.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "ragcluster.tlsSecret" . }}
    defaultMode: 0440
{{- end }}
{{- include "ragcluster.trustBundleVolume" .root }}
{{- end -}}

{{- define "ragcluster.clientTokenSecret" -}}
{{- default (printf "%s-admin-token" (include "ragcluster.fullname" .)) .Values.auth.clientTokenSecret -}}
{{- end -}}

{{/* The chart's client pods (ingest Job, helm test): trust the router's CA, send the client key. */}}
{{- define "ragcluster.clientEnv" -}}
{{- if .Values.tls.enabled }}
- name: RAGCLUSTER_TLS_CA
  value: {{ if .Values.tls.trustBundle.configMap }}{{ include "ragcluster.trustedCA" . | quote }}{{ else }}/etc/ragcluster/router-ca/ca.crt{{ end }}
- name: RAGCLUSTER_TOKEN
  value: /etc/ragcluster/token/token
{{- else }}
- name: RAGCLUSTER_INSECURE
  value: "true"
{{- end }}
{{- end -}}

{{- define "ragcluster.clientMounts" -}}
{{- if .Values.tls.enabled }}
{{- if .Values.tls.trustBundle.configMap }}
{{- include "ragcluster.trustBundleMount" . }}
{{- else }}
- name: router-ca
  mountPath: /etc/ragcluster/router-ca
  readOnly: true
{{- end }}
- name: token
  mountPath: /etc/ragcluster/token
  readOnly: true
{{- end }}
{{- end -}}

{{/* Only the CA of the router's Secret (never its private key) and the client key. */}}
{{- define "ragcluster.clientVolumes" -}}
{{- if .Values.tls.enabled }}
{{- if .Values.tls.trustBundle.configMap }}
{{- include "ragcluster.trustBundleVolume" . }}
{{- else }}
- name: router-ca
  secret:
    secretName: {{ include "ragcluster.tlsSecret" (dict "root" . "tier" "router") }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
- name: token
  secret:
    secretName: {{ include "ragcluster.clientTokenSecret" . }}
    items:
      - key: token
        path: token
{{- end }}
{{- end -}}
