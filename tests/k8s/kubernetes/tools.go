//go:build tools

// Package tools pins the commands scripts/k8s-tools.sh builds from k8s.io/kubernetes: the real
// kube-apiserver, kube-controller-manager and kubectl the integration tests run against.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
