package main

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/admin"
	"github.com/mirrorproxy/mirrorproxy/failover/group"
	"github.com/mirrorproxy/mirrorproxy/replicate"
)

const ctlToken = "ctl-test-token-0123456789"

type ctlNode struct{ queues []string }

func (n ctlNode) Group() replicate.Group {
	return replicate.Group{Master: "a", Members: []replicate.Member{{Node: "a", JoinEpoch: 1}, {Node: "b", JoinEpoch: 2}, {Node: "c", JoinEpoch: 3}}}
}
func (n ctlNode) Queues(vhost string) []string {
	if vhost == "/" {
		return n.queues
	}
	return nil
}

type ctlSynced struct{}

func (ctlSynced) Synced(_, queue string) []string {
	if queue == "ha.q1" {
		return []string{"c"}
	}
	return nil
}

func (ctlSynced) Syncing(_, queue string) bool { return queue == "ha.q2" }

// ctlSyncer knows the queues ha.q1 (synced at once) and ha.slow (a sync
// that lasts until the request ends), in vhost "/"; ha.q2 is syncing.
type ctlSyncer struct{}

func (ctlSyncer) SyncQueue(ctx context.Context, vhost, queue string) error {
	switch {
	case vhost == "/" && queue == "ha.q1":
		return nil
	case vhost == "/" && queue == "ha.slow":
		<-ctx.Done()
		return ctx.Err()
	}
	return fmt.Errorf("%w: %q in vhost %q", replicate.ErrUnknownQueue, queue, vhost)
}

func (ctlSyncer) CancelSyncQueue(vhost, queue string) error {
	switch {
	case vhost == "/" && queue == "ha.q2":
		return nil
	case vhost == "/" && queue == "ha.q1":
		return fmt.Errorf("%w: %q in vhost %q", replicate.ErrNotSyncing, queue, vhost)
	}
	return fmt.Errorf("%w: %q in vhost %q", replicate.ErrUnknownQueue, queue, vhost)
}

// ctlMirror is a group's mirror: it refuses every change, naming the master.
type ctlMirror struct{}

func (ctlMirror) err() error {
	return fmt.Errorf("%w: ask the master, %q", group.ErrNotMaster, "node-0")
}
func (m ctlMirror) SetPolicy(replicate.Policy) error                { return m.err() }
func (m ctlMirror) ClearPolicy(string, string) error                { return m.err() }
func (m ctlMirror) SyncQueue(context.Context, string, string) error { return m.err() }
func (m ctlMirror) CancelSyncQueue(string, string) error            { return m.err() }

// startCtlAPI serves an admin API with one policy, ha-all on ^ha\.
func startCtlAPI(t *testing.T) (string, *replicate.Policies) {
	t.Helper()
	ps := &replicate.Policies{}
	def, err := replicate.ParseDefinitionJSON([]byte(`{"ha-mode":"all"}`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := replicate.NewPolicy("/", "ha-all", `^ha\.`, replicate.ApplyToQueues, 0, def)
	if err != nil {
		t.Fatal(err)
	}
	if err := ps.Set(p); err != nil {
		t.Fatal(err)
	}
	h, err := admin.NewHandler(admin.Config{Node: ctlNode{queues: []string{"ha.q2", "ha.q1", "other"}},
		Policies: ps, Synced: ctlSynced{}, Syncer: ctlSyncer{}, Token: ctlToken, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), ps
}

func TestCtlListQueues(t *testing.T) {
	addr, _ := startCtlAPI(t)
	code, out, errs := runCLI("ctl", "--admin", addr, "list_queues", "name", "slave_pids", "synchronised_slave_pids", "policy", "state")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	want := "Listing queues for vhost / ...\n" +
		"name\tslave_pids\tsynchronised_slave_pids\tpolicy\tstate\n" +
		"ha.q1\t[b, c]\t[c]\tha-all\trunning\n" +
		"ha.q2\t[b, c]\t[]\tha-all\tsyncing\n"
	if out != want {
		t.Errorf("output:\n%q\nwant\n%q", out, want)
	}
	// Default columns, quiet; no message counter: messages stay empty.
	code, out, _ = runCLI("ctl", "--admin", "http://"+addr, "-t", "5", "list_queues", "-q")
	if code != 0 || out != "ha.q1\t\nha.q2\t\n" {
		t.Errorf("quiet default columns: exit %d %q", code, out)
	}
	code, out, _ = runCLI("ctl", "--admin", addr, "list_queues", "-p", "other", "--no-table-headers")
	if code != 0 || out != "Listing queues for vhost other ...\n" {
		t.Errorf("vhost other: exit %d %q", code, out)
	}
	// The timeout line only with --verbose, given before or after the verb.
	for _, args := range [][]string{{"--verbose", "list_queues"}, {"list_queues", "--verbose"}} {
		code, out, _ = runCLI(append([]string{"ctl", "--admin", addr}, append(args, "-p", "other", "--no-table-headers")...)...)
		if code != 0 || out != "Timeout: 60.0 seconds ...\nListing queues for vhost other ...\n" {
			t.Errorf("%v: exit %d %q", args, code, out)
		}
	}
	if code, _, errs := runCLI("ctl", "--admin", addr, "list_queues", "colour"); code != 64 || !strings.Contains(errs, `unknown column "colour"`) {
		t.Errorf("unknown column: exit %d %q", code, errs)
	}
}

func TestCtlPolicies(t *testing.T) {
	addr, ps := startCtlAPI(t)
	// Without the token the change is refused and the policy set unchanged.
	code, _, errs := runCLI("ctl", "--admin", addr, "set_policy", "two", `^two\.`, `{"ha-mode":"exactly","ha-params":2}`)
	if code != 69 || !strings.Contains(errs, "401") || !strings.Contains(errs, "--token") {
		t.Fatalf("set_policy without token: exit %d %q", code, errs)
	}
	if _, ok := ps.Get("/", "two"); ok {
		t.Fatal("set without the token")
	}
	code, out, errs := runCLI("ctl", "--admin", addr, "--token", ctlToken, "set_policy", "--apply-to", "queues",
		"two", `^two\.`, `{"ha-mode":"exactly","ha-params":2}`, "--priority", "5")
	if code != 0 {
		t.Fatalf("set_policy: exit %d %q", code, errs)
	}
	if want := `Setting policy "two" for pattern "^two\\." to "{\"ha-mode\":\"exactly\",\"ha-params\":2}" with priority "5" for vhost "/" ...` + "\n"; out != want {
		t.Errorf("set_policy output %q, want %q", out, want)
	}
	p, ok := ps.Get("/", "two")
	if !ok || p.Priority != 5 || p.ApplyTo != replicate.ApplyToQueues {
		t.Fatalf("policy = %+v %v", p, ok)
	}

	code, out, errs = runCLI("ctl", "--admin", addr, "list_policies")
	want := "Listing policies for vhost \"/\" ...\n" +
		"vhost\tname\tpattern\tapply-to\tdefinition\tpriority\n" +
		"/\tha-all\t^ha\\.\tqueues\t{\"ha-mode\":\"all\"}\t0\n" +
		"/\ttwo\t^two\\.\tqueues\t{\"ha-mode\":\"exactly\",\"ha-params\":2}\t5\n"
	if code != 0 || out != want {
		t.Errorf("list_policies: exit %d %s\n%q\nwant\n%q", code, errs, out, want)
	}

	t.Setenv("MIRRORPROXY_ADMIN_TOKEN", ctlToken)
	code, out, errs = runCLI("ctl", "--admin", addr, "clear_policy", "ha-all")
	if code != 0 || out != "Clearing policy \"ha-all\" on vhost \"/\" ...\n" {
		t.Fatalf("clear_policy: exit %d %q %q", code, out, errs)
	}
	if _, ok := ps.Get("/", "ha-all"); ok {
		t.Fatal("clear_policy left the policy")
	}
	code, _, errs = runCLI("ctl", "--admin", addr, "clear_policy", "ha-all")
	if code != 69 || !strings.Contains(errs, "no such policy") {
		t.Errorf("clearing again: exit %d %q", code, errs)
	}
	code, _, errs = runCLI("ctl", "--admin", addr, "set_policy", "bad", "(", `{"ha-mode":"all"}`)
	if code != 69 || !strings.Contains(errs, "not a valid regular expression") {
		t.Errorf("bad pattern: exit %d %q", code, errs)
	}
	if code, _, errs = runCLI("ctl", "--admin", addr, "set_policy", "x", "."); code != 64 || !strings.Contains(errs, "NAME PATTERN DEFINITION") {
		t.Errorf("two arguments: exit %d %q", code, errs)
	}
	if code, _, errs = runCLI("ctl", "--admin", addr, "set_policy", "x", ".", "{nope"); code != 64 || !strings.Contains(errs, "not valid JSON") {
		t.Errorf("bad JSON: exit %d %q", code, errs)
	}
}

func TestCtlUnreachable(t *testing.T) {
	srv := httptest.NewServer(nil)
	addr := strings.TrimPrefix(srv.URL, "http://")
	srv.Close()
	code, _, errs := runCLI("ctl", "--admin", addr, "-t", "2", "list_policies", "-q")
	if code != 69 || !strings.Contains(errs, "cannot reach the admin API at http://"+addr) {
		t.Errorf("exit %d %q", code, errs)
	}
	if code, _, errs := runCLI("ctl", "--admin", "ftp://x", "list_policies"); code != 64 || !strings.Contains(errs, "not HOST:PORT") {
		t.Errorf("ftp: exit %d %q", code, errs)
	}
}

func TestCtlReadsConfig(t *testing.T) {
	addr, ps := startCtlAPI(t)
	file := writeFile(t, "c.yaml", "node:\n  name: a\npeers:\n  - {name: a, client_address: 127.0.0.1:5673, gm_address: 127.0.0.1:5680, raft_address: 127.0.0.1:5681}\n"+
		"gm:\n  secret: a shared secret of enough length\nbroker:\n  username: u\nadmin:\n  address: "+addr+"\n  token: "+ctlToken+"\n")
	code, _, errs := runCLI("ctl", "--config", file, "clear_policy", "-q", "ha-all")
	if code != 0 {
		t.Fatalf("exit %d %q", code, errs)
	}
	if _, ok := ps.Get("/", "ha-all"); ok {
		t.Fatal("clear_policy with the config's token left the policy")
	}
}

func TestCtlSyncQueue(t *testing.T) {
	addr, _ := startCtlAPI(t)
	code, _, errs := runCLI("ctl", "--admin", addr, "sync_queue", "ha.q1")
	if code != 69 || !strings.Contains(errs, "401") || !strings.Contains(errs, "--token") {
		t.Fatalf("sync_queue without token: exit %d %q", code, errs)
	}
	t.Setenv("MIRRORPROXY_ADMIN_TOKEN", ctlToken)
	code, out, errs := runCLI("ctl", "--admin", addr, "sync_queue", "ha.q1")
	if code != 0 || out != "Synchronising queue 'ha.q1' in vhost '/' ...\n" {
		t.Fatalf("sync_queue: exit %d %q %q", code, out, errs)
	}
	code, out, errs = runCLI("ctl", "--admin", addr, "sync_queue", "-p", "v1", "ha.q1")
	if code != 69 || out != "Synchronising queue 'ha.q1' in vhost 'v1' ...\n" ||
		!strings.Contains(errs, `Error: no such mirrored queue: "ha.q1" in vhost "v1" (404 Not Found)`) {
		t.Errorf("sync_queue of an unknown queue: exit %d %q %q", code, out, errs)
	}
	// -p after the queue, as rabbitmqctl takes it.
	if code, _, errs = runCLI("ctl", "--admin", addr, "sync_queue", "-q", "ha.q1", "-p", "v1"); code != 69 || !strings.Contains(errs, `in vhost "v1"`) {
		t.Errorf("sync_queue QUEUE -p VHOST: exit %d %q", code, errs)
	}
	for _, args := range [][]string{{}, {"a", "b"}, {"a", "--priority", "1"}} {
		if code, _, errs := runCLI(append([]string{"ctl", "--admin", addr, "sync_queue"}, args...)...); code != 64 || !strings.Contains(errs, "sync_queue takes QUEUE") {
			t.Errorf("sync_queue %q: exit %d %q", args, code, errs)
		}
	}

	// A sync longer than --timeout, given after the verb or before it:
	// ctl stops waiting and says the sync goes on.
	for _, args := range [][]string{{"sync_queue", "-t", "1", "ha.slow"}, {"-t", "1", "sync_queue", "ha.slow"}} {
		code, _, errs = runCLI(append([]string{"ctl", "--admin", addr}, args...)...)
		if code != 69 || !strings.Contains(errs, "gave up waiting after 1s; the sync goes on") {
			t.Errorf("%q: exit %d %q", args, code, errs)
		}
	}

	code, out, errs = runCLI("ctl", "--admin", addr, "cancel_sync_queue", "ha.q2")
	if code != 0 || out != "Stopping synchronising queue 'ha.q2' in vhost '/' ...\n" {
		t.Errorf("cancel_sync_queue: exit %d %q %q", code, out, errs)
	}
	code, _, errs = runCLI("ctl", "--admin", addr, "cancel_sync_queue", "-q", "ha.q1")
	if code != 69 || !strings.Contains(errs, "queue is not being synchronised") || !strings.Contains(errs, "409 Conflict") {
		t.Errorf("cancel_sync_queue of a queue not syncing: exit %d %q", code, errs)
	}
	if code, _, errs = runCLI("ctl", "--admin", addr, "cancel_sync_queue"); code != 64 || !strings.Contains(errs, "cancel_sync_queue takes QUEUE") {
		t.Errorf("cancel_sync_queue without a queue: exit %d %q", code, errs)
	}
}

// TestCtlOnAMirror: a mirror's admin API refuses changes and syncs, and
// ctl shows the reason with the master's name.
func TestCtlOnAMirror(t *testing.T) {
	h, err := admin.NewHandler(admin.Config{Node: ctlNode{}, Policies: &replicate.Policies{}, Changer: ctlMirror{}, Syncer: ctlMirror{},
		Token: ctlToken, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	for _, args := range [][]string{
		{"set_policy", "p", ".", `{"ha-mode":"all"}`},
		{"clear_policy", "p"},
		{"sync_queue", "q"},
		{"cancel_sync_queue", "q"},
	} {
		code, _, errs := runCLI(append([]string{"ctl", "--admin", addr, "--token", ctlToken}, args...)...)
		if code != 69 || errs != "Error: this node is not the master: ask the master, \"node-0\" (409 Conflict)\n" {
			t.Errorf("%q: exit %d %q", args, code, errs)
		}
	}
}

// ctlTransferer is a group of a, b and c whose master is a; b is synced
// for every mirrored queue, c is not.
type ctlTransferer struct{}

func (ctlTransferer) TransferMaster(_ context.Context, target string) (string, uint64, error) {
	switch target {
	case "", "b":
		return "b", 5, nil
	case "a":
		return "a", 4, nil
	case "c":
		return "", 0, fmt.Errorf("%w: c is not synced for %s (sync first: ctl sync_queue)", group.ErrCannotHandOver, `"ha.q1" in vhost "/"`)
	}
	return "", 0, fmt.Errorf("%w: %q (members: a, b, c)", group.ErrUnknownMember, target)
}

func TestCtlTransferMaster(t *testing.T) {
	h, err := admin.NewHandler(admin.Config{Node: ctlNode{}, Policies: &replicate.Policies{}, Transferer: ctlTransferer{},
		Token: ctlToken, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	if code, _, errs := runCLI("ctl", "--admin", addr, "transfer_master", "b"); code == 0 || !strings.Contains(errs, "token") {
		t.Errorf("transfer_master without token: exit %d %q", code, errs)
	}
	ctl := func(args ...string) (int, string, string) {
		return runCLI(append([]string{"ctl", "--admin", addr, "--token", ctlToken, "transfer_master"}, args...)...)
	}
	if code, out, errs := ctl("b"); code != 0 || out != "Transferring the master role to \"b\" ...\nb is the master (view epoch 5)\n" {
		t.Errorf("transfer_master b: exit %d %q %q", code, out, errs)
	}
	if code, out, errs := ctl("-q"); code != 0 || out != "b is the master (view epoch 5)\n" {
		t.Errorf("transfer_master -q: exit %d %q %q", code, out, errs)
	}
	if code, _, errs := ctl("c"); code != 69 || errs != "Error: cannot hand over: c is not synced for \"ha.q1\" in vhost \"/\" (sync first: ctl sync_queue) (409 Conflict)\n" {
		t.Errorf("transfer_master to an unsynced mirror: exit %d %q", code, errs)
	}
	if code, _, errs := ctl("z"); code != 69 || errs != "Error: no such member in the view: \"z\" (members: a, b, c) (404 Not Found)\n" {
		t.Errorf("transfer_master to a stranger: exit %d %q", code, errs)
	}
	if code, _, errs := ctl("b", "c"); code != 64 || !strings.Contains(errs, "at most one NODE") {
		t.Errorf("transfer_master b c: exit %d %q", code, errs)
	}

	plain, err := admin.NewHandler(admin.Config{Node: ctlNode{}, Policies: &replicate.Policies{}, Token: ctlToken, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	srv2 := httptest.NewServer(plain)
	defer srv2.Close()
	code, _, errs := runCLI("ctl", "--admin", strings.TrimPrefix(srv2.URL, "http://"), "--token", ctlToken, "transfer_master")
	if code != 69 || !strings.Contains(errs, "not in a group") {
		t.Errorf("transfer_master on a plain proxy: exit %d %q", code, errs)
	}
}
