{{/* Names, labels and the controller's RBAC rules, shared by the templates. */}}

{{- define "osprov.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "osprov.fullname" -}}
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

{{- define "osprov.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "osprov.selectorLabels" -}}
app.kubernetes.io/name: {{ include "osprov.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "osprov.labels" -}}
helm.sh/chart: {{ include "osprov.chart" . }}
{{ include "osprov.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: osprov
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "osprov.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "osprov.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "osprov.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Lease of the leader election: osprov-<identifier> (as `osprov controller` names it). */}}
{{- define "osprov.leaseName" -}}
{{- printf "osprov-%s" .Values.identifier }}
{{- end }}

{{/*
Exactly what the controller uses in the namespaces it watches (tests/rbac.rs compares these
rules with the API requests the controller really makes, both ways):
- OSProvisioningRequests: watch them, add/remove the finalizer (patch), read and write status;
- OSDispatchers: watch them, write status;
- ManagedHosts: watch, create, delete, read one after a create race, write status;
- events.k8s.io Events: create, and patch the series of a repeated event;
- Secrets (Redfish adapter and callback endpoint): get the credentials and CA Secrets a
  dispatcher names; create, get, update and list (by label) the per-operation Secrets
  osprov-op-<key>. Never watch, patch or delete: the operation Secrets are owned by their
  request and garbage-collected with it.
*/}}
{{- define "osprov.rules" -}}
- apiGroups: ["osprov.io"]
  resources: ["osprovisioningrequests"]
  verbs: ["list", "watch", "get", "patch"]
- apiGroups: ["osprov.io"]
  resources: ["osprovisioningrequests/status"]
  verbs: ["update"]
- apiGroups: ["osprov.io"]
  resources: ["osdispatchers"]
  verbs: ["list", "watch"]
- apiGroups: ["osprov.io"]
  resources: ["osdispatchers/status"]
  verbs: ["update"]
- apiGroups: ["osprov.io"]
  resources: ["managedhosts"]
  verbs: ["list", "watch", "get", "create", "delete"]
- apiGroups: ["osprov.io"]
  resources: ["managedhosts/status"]
  verbs: ["update"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Secrets: the dispatchers' account and CA Secrets, and the operation records. Granted only in
the namespaces where dispatchers live (watchNamespaces, else secretNamespaces, else the release
namespace), never cluster-wide. */}}
{{- define "osprov.secretRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "create", "update", "delete"]
{{- end }}

{{/* The URL under which images reach the callback endpoint (OSPROV_CALLBACK_URL): callback.url,
else the callback Service's in-cluster DNS name and port. */}}
{{- define "osprov.callbackUrl" -}}
{{- if .Values.callback.url }}
{{- .Values.callback.url | trimSuffix "/" }}
{{- else }}
{{- printf "%s://%s-callback.%s.svc:%d" (ternary "https" "http" (ne (include "osprov.callbackTlsSecret" .) "")) (include "osprov.fullname" .) .Release.Namespace (int .Values.callback.service.port) }}
{{- end }}
{{- end }}

{{/* The Secret holding the callback endpoint's certificate: callback.tls.secretName, else
<fullname>-callback-tls when cert-manager issues it, else none. */}}
{{- define "osprov.callbackTlsSecret" -}}
{{- if .Values.callback.tls.secretName }}
{{- .Values.callback.tls.secretName }}
{{- else if .Values.callback.tls.certManager.enabled }}
{{- printf "%s-callback-tls" (include "osprov.fullname" .) }}
{{- end }}
{{- end }}
