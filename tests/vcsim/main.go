// Command vcsim runs govmomi's vCenter simulator (github.com/vmware/govmomi/simulator) with a
// small inventory shaped for this project's tests. Built by scripts/vcsim.sh.
//
// Usage:
//
//	vcsim [-listen 127.0.0.1:0] [-hosts 1] [-vms 2] [-username U -password P]
//	      [-isos a.iso,b.iso] [-templates t1,t2] [-plain] [-poweroff] [-trace]
//
//	-listen ADDR     address to listen on; port 0 picks a free port (default 127.0.0.1:0)
//	-hosts N         ESXi hosts in the one cluster DC0_C0 (>= 1; default 1)
//	-vms N           VMs in total (>= 0; default 2), all in the cluster's root resource pool,
//	                 named DC0_C0_RP0_VM0 .. DC0_C0_RP0_VM{N-1}
//	-username U      with -password: the only credentials Login accepts. Without them, any
//	-password P      non-empty user name and password are accepted (vcsim's default).
//	-isos LIST       comma-separated file names created (small, fixed content) in the backing
//	                 directory of datastore LocalDS_0, so "[LocalDS_0] NAME" exists
//	-templates LIST  comma-separated names of VM templates to make (needs -vms >= 1): each is a
//	                 clone of the first VM marked as template (CloneVM_Task with template=true,
//	                 through the simulator's own SOAP API), in DC0/vm; its disk's flat file then
//	                 holds the text "vcsim template NAME\n", so a copy of it can be told apart
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
//	 "hosts":["DC0_C0_H0"],"vms":["DC0_C0_RP0_VM0","DC0_C0_RP0_VM1"],
//	 "templates":{"t1":"[LocalDS_0] t1/t1.vmdk"}}
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
	"context"
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

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator" // vAPI REST endpoints (/rest), as vcsim has
	"github.com/vmware/govmomi/vim25/types"
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
	// Template name -> its disk's datastore path.
	Templates map[string]string `json:"templates"`
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
	templates := flag.String("templates", "", "comma-separated VM templates to make")
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

	out := info{Datastore: "LocalDS_0", Datacenter: "DC0", Cluster: "DC0_C0", Hosts: []string{}, VMs: []string{}, Templates: map[string]string{}}
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

	for _, name := range strings.Split(*templates, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		if len(out.VMs) == 0 {
			fatal("-templates needs -vms >= 1")
		}
		file, err := makeTemplate(server, out.VMs[0], name)
		if err != nil {
			fatal("-templates: %s: %v", name, err)
		}
		p := filepath.Join(out.DatastoreDir, filepath.FromSlash(strings.TrimPrefix(file, "["+out.Datastore+"] ")))
		flat := simulator.VirtualDiskBackingFileName(p)
		if err := os.WriteFile(flat, []byte("vcsim template "+name+"\n"), 0o644); err != nil {
			fatal("-templates: %v", err)
		}
		out.Templates[name] = file
	}

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

// makeTemplate clones VM `from` into a template `name` through the simulator's SOAP API and
// returns the datastore path of the template's disk.
func makeTemplate(server *simulator.Server, from, name string) (string, error) {
	ctx := context.Background()
	u := *server.URL
	if u.User == nil {
		u.User = url.UserPassword("user", "pass")
	}
	c, err := govmomi.NewClient(ctx, &u, true)
	if err != nil {
		return "", err
	}
	defer func() { _ = c.Logout(ctx) }()
	finder := find.NewFinder(c.Client, true)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		return "", err
	}
	finder.SetDatacenter(dc)
	vm, err := finder.VirtualMachine(ctx, from)
	if err != nil {
		return "", err
	}
	folders, err := dc.Folders(ctx)
	if err != nil {
		return "", err
	}
	task, err := vm.Clone(ctx, folders.VmFolder, name, types.VirtualMachineCloneSpec{Template: true})
	if err != nil {
		return "", err
	}
	res, err := task.WaitForResult(ctx)
	if err != nil {
		return "", err
	}
	tmpl := object.NewVirtualMachine(c.Client, res.Result.(types.ManagedObjectReference))
	devices, err := tmpl.Device(ctx)
	if err != nil {
		return "", err
	}
	for _, d := range devices.SelectByType((*types.VirtualDisk)(nil)) {
		if b, ok := d.(*types.VirtualDisk).Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
			return b.GetVirtualDeviceFileBackingInfo().FileName, nil
		}
	}
	return "", fmt.Errorf("the clone has no file-backed disk")
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
