// Command vcsim runs govmomi's vCenter simulator (github.com/vmware/govmomi/simulator) with a
// small inventory shaped for this project's tests. Built by scripts/vcsim.sh.
//
// Usage:
//
//	vcsim [-listen 127.0.0.1:0] [-hosts 1] [-vms 2] [-username U -password P]
//	      [-isos a.iso,b.iso] [-plain] [-poweroff] [-trace]
//
//	-listen ADDR     address to listen on; port 0 picks a free port (default 127.0.0.1:0)
//	-hosts N         ESXi hosts in the one cluster DC0_C0 (>= 1; default 1)
//	-vms N           VMs in total (>= 0; default 2), all in the cluster's root resource pool,
//	                 named DC0_C0_RP0_VM0 .. DC0_C0_RP0_VM{N-1}
//	-username U      with -password: the only credentials Login accepts. Without them, any
//	-password P      non-empty user name and password are accepted (vcsim's default).
//	-isos LIST       comma-separated file names created (small, fixed content) in the backing
//	                 directory of datastore LocalDS_0, so "[LocalDS_0] NAME" exists
//	-plain           serve HTTP instead of HTTPS
//	-poweroff        leave the VMs powered off (default: powered on, as vcsim does)
//	-trace           log every SOAP request and response to stderr
//
// Inventory (govmomi's VPX model): one datacenter DC0, one cluster DC0_C0 with hosts
// DC0_C0_H0..H{N-1}, no standalone host, one datastore LocalDS_0 mounted on every host, one
// distributed portgroup DC0_DVPG0 (each VM's NIC), VM folder DC0/vm. Each VM has a pvscsi
// controller, a 10 GB disk, an IDE controller with one CD-ROM (no ISO), and one NIC.
//
// Once serving, one line of JSON goes to stdout:
//
//	{"url":"https://127.0.0.1:PORT/sdk","thumbprint":"AA:BB:..","datastore":"LocalDS_0",
//	 "datastore_dir":"/tmp/govcsim-../DC0-LocalDS_0","datacenter":"DC0","cluster":"DC0_C0",
//	 "hosts":["DC0_C0_H0"],"vms":["DC0_C0_RP0_VM0","DC0_C0_RP0_VM1"]}
//
// "thumbprint" is the SHA-1 thumbprint of the TLS certificate ("" with -plain); the certificate
// is Go's fixed httptest localhost certificate, so the thumbprint is the same on every run.
// Logs go to stderr. The simulator keeps all state in memory: each start is a fresh inventory.
// VM names, config.uuid and config.instanceUuid are the same on every start (derived from the
// VM's .vmx path); managed object ids (vm-NN) depend on -hosts. vAPI REST is served too
// (POST /rest/com/vmware/cis/session with basic auth).
//
// It serves until SIGTERM or SIGINT, or until its standard input reaches end of file when that
// input is a pipe or socket (so it stops when the parent that holds the pipe goes away; stdin
// from /dev/null or a terminal is ignored). On such an exit the datastore directory
// ($TMPDIR/govcsim-*) is removed; SIGKILL leaves it behind, so point TMPDIR at a per-test
// directory or stop the simulator by closing its stdin.
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator" // vAPI REST endpoints (/rest), as vcsim has
)

type info struct {
	URL          string   `json:"url"`
	Thumbprint   string   `json:"thumbprint"`
	Datastore    string   `json:"datastore"`
	DatastoreDir string   `json:"datastore_dir"`
	Datacenter   string   `json:"datacenter"`
	Cluster      string   `json:"cluster"`
	Hosts        []string `json:"hosts"`
	VMs          []string `json:"vms"`
}

func main() {
	log.SetPrefix("vcsim: ")
	log.SetFlags(0)

	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (port 0: a free port)")
	hosts := flag.Int("hosts", 1, "hosts in cluster DC0_C0")
	vms := flag.Int("vms", 2, "VMs in total, in the cluster's root resource pool")
	username := flag.String("username", "", "the only user name Login accepts (with -password)")
	password := flag.String("password", "", "the only password Login accepts (with -username)")
	isos := flag.String("isos", "", "comma-separated files to create on LocalDS_0")
	plain := flag.Bool("plain", false, "serve HTTP instead of HTTPS")
	poweroff := flag.Bool("poweroff", false, "leave the VMs powered off")
	trace := flag.Bool("trace", false, "log SOAP traffic to stderr")
	flag.Parse()

	if flag.NArg() != 0 {
		log.Fatalf("unexpected arguments: %q", flag.Args())
	}
	if *hosts < 1 || *vms < 0 {
		log.Fatal("-hosts must be >= 1 and -vms >= 0")
	}
	if (*username == "") != (*password == "") {
		log.Fatal("-username and -password go together")
	}
	simulator.Trace = *trace

	model := simulator.VPX()
	model.Datacenter = 1
	model.Host = 0 // no standalone host: every VM lives in the cluster
	model.Cluster = 1
	model.ClusterHost = *hosts
	model.Pool = 0 // VMs go to the cluster's root pool, named ..._RP0_VM<i>
	model.Machine = *vms
	model.Datastore = 1
	model.Autostart = !*poweroff

	if err := model.Create(); err != nil {
		log.Fatalf("creating the inventory: %v", err)
	}
	defer model.Remove()
	// fatal stops after removing the datastore directories (log.Fatal skips deferred calls).
	fatal := func(format string, args ...any) {
		model.Remove()
		log.Fatalf(format, args...)
	}

	svc := model.Service
	svc.RegisterEndpoints = true
	svc.Listen = &url.URL{Host: *listen}
	if *username != "" {
		svc.Listen.User = url.UserPassword(*username, *password)
	}
	if !*plain {
		svc.TLS = new(tls.Config)
	}

	out := info{Datastore: "LocalDS_0", Datacenter: "DC0", Cluster: "DC0_C0", Hosts: []string{}, VMs: []string{}}
	reg := model.Map()
	for _, e := range reg.All("Datastore") {
		if ds, ok := e.(*simulator.Datastore); ok && ds.Name == out.Datastore {
			out.DatastoreDir = ds.Summary.Url
		}
	}
	if out.DatastoreDir == "" {
		fatal("datastore %s not found", out.Datastore)
	}
	for _, e := range reg.All("HostSystem") {
		out.Hosts = append(out.Hosts, e.Entity().Name)
	}
	for _, e := range reg.All("VirtualMachine") {
		out.VMs = append(out.VMs, e.Entity().Name)
	}
	sort.Strings(out.Hosts)
	sortNumbered(out.VMs)

	for _, name := range strings.Split(*isos, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		p := filepath.Join(out.DatastoreDir, filepath.FromSlash(name))
		if !strings.HasPrefix(p, out.DatastoreDir+string(filepath.Separator)) {
			fatal("-isos: %q is outside the datastore", name)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			fatal("-isos: %v", err)
		}
		if err := os.WriteFile(p, []byte("vcsim test ISO "+name+"\n"), 0o644); err != nil {
			fatal("-isos: %v", err)
		}
	}

	server, err := newServer(svc)
	if err != nil {
		fatal("listening on %s: %v", *listen, err)
	}
	defer server.Close()

	u := *server.URL
	u.User = nil
	out.URL = u.String()
	if !*plain {
		out.Thumbprint = server.CertificateInfo().ThumbprintSHA1
	}
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
	log.Printf("serving %s (%d hosts, %d VMs)", out.URL, len(out.Hosts), len(out.VMs))

	done := make(chan string, 2)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { done <- (<-sig).String() }()
	if st, err := os.Stdin.Stat(); err == nil && st.Mode()&(os.ModeNamedPipe|os.ModeSocket) != 0 {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			done <- "end of standard input"
		}()
	}
	log.Printf("stopping: %s", <-done)
}

// newServer starts the HTTP(S) server; the simulator panics when it cannot listen.
func newServer(svc *simulator.Service) (s *simulator.Server, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	return svc.NewServer(), nil
}

// sortNumbered orders names like X_VM2 < X_VM10 (by length, then text).
func sortNumbered(names []string) {
	sort.Slice(names, func(i, j int) bool {
		if len(names[i]) != len(names[j]) {
			return len(names[i]) < len(names[j])
		}
		return names[i] < names[j]
	})
}
