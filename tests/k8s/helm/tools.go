//go:build tools

// Package tools pins the helm CLI scripts/k8s-tools.sh builds from helm.sh/helm/v4.
package tools

import _ "helm.sh/helm/v4/cmd/helm"
