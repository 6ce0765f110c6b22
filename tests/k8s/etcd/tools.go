//go:build tools

// Package tools pins the etcd server scripts/k8s-tools.sh builds: the release the pinned
// Kubernetes requires (see ../pins.env).
package tools

import _ "go.etcd.io/etcd/server/v3"
