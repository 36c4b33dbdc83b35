//go:build linux

package testenv

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain())
	}
	goleak.VerifyTestMain(m)
}

// brokerTest skips a test that starts brokers under -short (make
// test-short), and registers a goroutine leak check that runs after every
// cleanup registered later (cleanups run last-in first-out), i.e. after
// the group was closed.
func brokerTest(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts RabbitMQ brokers; skipped with -short")
	}
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not synchronisation
	}
}

func dial(t *testing.T, n *Node) (*amqp.Connection, *amqp.Channel) {
	t.Helper()
	conn, err := amqp.Dial(n.URL)
	if err != nil {
		t.Fatalf("dial %s: %v", n.URL, err)
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		t.Fatalf("channel on %s: %v", n.Name, err)
	}
	return conn, ch
}

// publishConfirmed publishes body to queue q through the default exchange
// and waits for the broker's confirm.
func publishConfirmed(t *testing.T, ch *amqp.Channel, q, body string, persistent bool) {
	t.Helper()
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("confirm mode: %v", err)
	}
	mode := amqp.Transient
	if persistent {
		mode = amqp.Persistent
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q, true, false,
		amqp.Publishing{Body: []byte(body), DeliveryMode: mode})
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil || !ok {
		t.Fatalf("publish not confirmed: ok=%v err=%v", ok, err)
	}
}

func getOne(t *testing.T, ch *amqp.Channel, q string) string {
	t.Helper()
	d, ok, err := ch.Get(q, true)
	if err != nil {
		t.Fatalf("get from %s: %v", q, err)
	}
	if !ok {
		t.Fatalf("queue %s is empty", q)
	}
	return string(d.Body)
}

func refused(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

func TestOneNodePublishGet(t *testing.T) {
	brokerTest(t)
	began := time.Now()
	g := Start(t, Options{Backend: BackendLocal})
	t.Logf("TIMING 1 node ready in %.1fs", time.Since(began).Seconds())

	if len(g.Nodes) != 1 {
		t.Fatalf("got %d nodes, want 1", len(g.Nodes))
	}
	n := g.Nodes[0]
	if !strings.HasPrefix(n.Name, "mpt-"+g.ID+"-0@") || n.AMQPPort == 0 || n.DistPort == 0 || n.MgmtURL != "" {
		t.Fatalf("unexpected node fields: %+v", n)
	}
	if !n.Running() {
		t.Fatal("Running() is false for a started node")
	}
	// The pid we started must be the VM itself, or Pdeathsig would kill
	// only a shell and leave the broker behind.
	p := n.rt.(*localNode).current()
	comm, err := os.ReadFile("/proc/" + itoa(p.pid) + "/comm")
	if err != nil || strings.TrimSpace(string(comm)) != "beam.smp" {
		t.Fatalf("broker process %d is %q (%v), want beam.smp", p.pid, comm, err)
	}

	conn, ch := dial(t, n)
	defer conn.Close()
	if _, err := ch.QueueDeclare("tq", false, false, false, false, nil); err != nil {
		t.Fatalf("declare: %v", err)
	}
	publishConfirmed(t, ch, "tq", "hello", false)
	if got := getOne(t, ch, "tq"); got != "hello" {
		t.Fatalf("got %q, want hello", got)
	}

	out, err := n.Ctl(context.Background(), "list_queues", "name", "--quiet")
	if err != nil {
		t.Fatalf("ctl: %v", err)
	}
	if !strings.Contains(out, "tq") {
		t.Fatalf("list_queues output lacks tq: %q", out)
	}
	if _, err := n.Ctl(context.Background(), "no_such_command"); err == nil {
		t.Fatal("Ctl with an unknown command did not fail")
	}
}

func TestThreeNodesAreIndependent(t *testing.T) {
	brokerTest(t)
	began := time.Now()
	g := Start(t, Options{Backend: BackendLocal, Nodes: 3})
	t.Logf("TIMING 3 nodes ready in %.1fs", time.Since(began).Seconds())

	seen := map[int]bool{}
	for _, n := range g.Nodes {
		for _, p := range []int{n.AMQPPort, n.DistPort} {
			if seen[p] {
				t.Fatalf("port %d used twice", p)
			}
			seen[p] = true
		}
	}
	conn0, ch0 := dial(t, g.Nodes[0])
	defer conn0.Close()
	if _, err := ch0.QueueDeclare("only-on-0", true, false, false, false, nil); err != nil {
		t.Fatalf("declare on node 0: %v", err)
	}
	for _, n := range g.Nodes[1:] {
		conn, ch := dial(t, n)
		_, err := ch.QueueDeclarePassive("only-on-0", true, false, false, false, nil)
		conn.Close()
		var ae *amqp.Error
		if !errors.As(err, &ae) || ae.Code != amqp.NotFound {
			t.Fatalf("passive declare on %s: got %v, want 404 NOT_FOUND", n.Name, err)
		}
	}
}

// restartKeepsDurable stops the node with halt, checks the port refuses,
// starts it again and checks the persistent message survived.
func restartKeepsDurable(t *testing.T, halt func(n *Node) error) {
	brokerTest(t)
	g := Start(t, Options{Backend: BackendLocal})
	n := g.Nodes[0]
	conn, ch := dial(t, n)
	if _, err := ch.QueueDeclare("durable-q", true, false, false, false, nil); err != nil {
		t.Fatalf("declare: %v", err)
	}
	publishConfirmed(t, ch, "durable-q", "survivor", true)
	conn.Close()
	// The confirm means the message is on disk, but RabbitMQ 3.10 keeps
	// the queue's record in mnesia's log, which its disk_log may still hold
	// in a write cache for a moment: a SIGKILL right after the declare can
	// lose the queue (seen here under load). Have mnesia dump its log, so
	// the test is about Kill and Start, not that window.
	if _, err := n.Ctl(context.Background(), "eval", "mnesia:dump_log()."); err != nil {
		t.Fatalf("mnesia:dump_log: %v", err)
	}

	if err := halt(n); err != nil {
		t.Fatalf("halt: %v", err)
	}
	if n.Running() {
		t.Fatal("Running() is true after the node was halted")
	}
	if !refused(n.AMQPAddr) {
		t.Fatalf("AMQP port %s still accepts connections", n.AMQPAddr)
	}
	if err := halt(n); err != nil {
		t.Fatalf("halting a halted node: %v", err)
	}

	began := time.Now()
	if err := n.Start(context.Background()); err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Logf("TIMING restart in %.1fs", time.Since(began).Seconds())
	if err := n.Start(context.Background()); err == nil {
		t.Fatal("starting a running node did not fail")
	}
	conn, ch = dial(t, n)
	defer conn.Close()
	if got := getOne(t, ch, "durable-q"); got != "survivor" {
		t.Fatalf("got %q after restart, want survivor", got)
	}
}

func TestKillAndRestart(t *testing.T) {
	restartKeepsDurable(t, func(n *Node) error { return n.Kill() })
}

func TestStopAndRestart(t *testing.T) {
	restartKeepsDurable(t, func(n *Node) error {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		return n.Stop(ctx)
	})
}

func TestCloseLeavesNothing(t *testing.T) {
	brokerTest(t)
	g, err := StartGroup(context.Background(), Options{Backend: BackendLocal, Nodes: 2, Logger: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, n := range g.Nodes {
		p := n.rt.(*localNode).current()
		pids = append(pids, p.pid)
		pids = append(pids, descendants(p.pid)...)
	}
	if got := groupProcs(g.Dir); len(got) != 2 {
		t.Fatalf("found %d broker processes by directory, want 2 (pids %v)", len(got), got)
	}
	if err := g.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if got := groupProcs(g.Dir); len(got) != 0 {
		t.Fatalf("broker processes %v remain after Close", got)
	}
	if left := alivePids(pids); len(left) != 0 {
		t.Fatalf("processes %v of the group remain after Close (all: %v)", left, pids)
	}
	if _, err := os.Stat(g.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("group directory %s still there after Close: %v", g.Dir, err)
	}
	if err := g.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	for _, n := range g.Nodes {
		if err := n.Start(context.Background()); err == nil {
			t.Fatal("starting a node of a closed group did not fail")
		}
	}
}

func TestBadConfigFailsWithLogTail(t *testing.T) {
	brokerTest(t)
	_, err := StartGroup(context.Background(), Options{
		Backend: BackendLocal,
		Nodes:   2,
		Config:  "no_such_setting_for_testenv = 42",
		Logger:  t.Logf,
	})
	var se *StartError
	if !errors.As(err, &se) {
		t.Fatalf("got %v, want a *StartError", err)
	}
	t.Cleanup(func() { os.RemoveAll(se.Dir) })
	t.Logf("the error reads:\n%v", err)
	if !strings.Contains(err.Error(), "no_such_setting_for_testenv") {
		t.Fatalf("error does not quote the bad setting from the log:\n%v", err)
	}
	if !strings.Contains(err.Error(), "--- console output of ") {
		t.Fatalf("error has no log tail:\n%v", err)
	}
	if !strings.Contains(err.Error(), se.Dir) {
		t.Fatalf("error does not name the kept directory %s:\n%v", se.Dir, err)
	}
	if got := groupProcs(se.Dir); len(got) != 0 {
		t.Fatalf("processes %v remain after a failed start", got)
	}
}

// TestPortTakenIsRetried hands the first attempt an AMQP port and the
// second a distribution port that are in use, and expects the start to
// succeed on fresh ports.
func TestPortTakenIsRetried(t *testing.T) {
	brokerTest(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port
	calls := 0
	opts := Options{Backend: BackendLocal, portPicker: func(n int) ([]int, error) {
		calls++
		ports, err := freePorts(n)
		if err == nil && calls <= 2 {
			ports[calls-1] = busyPort // the AMQP port, then the dist port
		}
		return ports, err
	}}
	g := Start(t, opts)
	if calls < 3 {
		t.Fatalf("port picker called %d times, want a retry", calls)
	}
	if n := g.Nodes[0]; n.AMQPPort == busyPort || n.DistPort == busyPort {
		t.Fatalf("node kept the busy port %d", busyPort)
	}
	conn, _ := dial(t, g.Nodes[0])
	conn.Close()
}

func TestManagement(t *testing.T) {
	brokerTest(t)
	g := Start(t, Options{Backend: BackendLocal, Management: true})
	n := g.Nodes[0]
	if n.MgmtPort == 0 || n.MgmtURL == "" {
		t.Fatalf("no management port: %+v", n)
	}
	req, err := http.NewRequest(http.MethodGet, n.MgmtURL+"/api/overview", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth("guest", "guest")
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET /api/overview: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/overview: status %s", resp.Status)
	}
}

func TestBackendSelection(t *testing.T) {
	t.Setenv(EnvBackend, "docker")
	if o, err := (Options{}).withDefaults(); err != nil || o.Backend != BackendDocker {
		t.Fatalf("%s=docker: got backend %q, %v", EnvBackend, o.Backend, err)
	}
	t.Setenv(EnvBrokerImage, "rabbitmq:3.13")
	t.Setenv(EnvSidecarImage, "my/sidecar:1")
	o, err := (Options{Sidecar: &SidecarOptions{}}).withDefaults()
	if err != nil || o.BrokerImage != "rabbitmq:3.13" || o.Sidecar.Image != "my/sidecar:1" {
		t.Fatalf("image variables: got %q, %+v, %v", o.BrokerImage, o.Sidecar, err)
	}
	// This test binary does not import testenv/docker: asking for the
	// docker backend says which import is missing (and starts nothing).
	t.Setenv(EnvBackend, "docker")
	if _, err := StartGroup(context.Background(), Options{}); !errors.Is(err, ErrBackendNotLinked) ||
		!strings.Contains(err.Error(), `"github.com/mirrorproxy/mirrorproxy/testenv/docker"`) {
		t.Fatalf("docker backend not linked: got %v, want ErrBackendNotLinked naming the package", err)
	}
	t.Setenv(EnvBackend, "podman")
	if _, err := StartGroup(context.Background(), Options{}); err == nil || !strings.Contains(err.Error(), "podman") {
		t.Fatalf("unknown backend: got %v", err)
	}
	t.Setenv(EnvBackend, "")
	if _, err := StartGroup(context.Background(), Options{Sidecar: &SidecarOptions{Binary: "/nonexistent/mirrorproxy"}}); err == nil || !strings.Contains(err.Error(), "/nonexistent/mirrorproxy") {
		t.Fatalf("a missing sidecar binary: got %v", err)
	}
	if _, err := StartGroup(context.Background(), Options{Nodes: -1}); err == nil {
		t.Fatal("Nodes: -1 did not fail")
	}
}

func TestNotInstalled(t *testing.T) {
	t.Setenv(EnvRabbitMQBin, t.TempDir())
	_, err := StartGroup(context.Background(), Options{Backend: BackendLocal})
	if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "apt-get install -y rabbitmq-server") {
		t.Fatalf("got %v, want ErrNotInstalled with the install hint", err)
	}
}

func TestLocalSidecar(t *testing.T) {
	brokerTest(t)
	g := Start(t, Options{Backend: BackendLocal, Nodes: 2, Sidecar: &SidecarOptions{}})
	n := g.Nodes[0]
	if n.SidecarAddr == "" || n.SidecarPort == n.AMQPPort || !n.Sidecar().Running() {
		t.Fatalf("sidecar fields %q %d, running %v", n.SidecarAddr, n.SidecarPort, n.Sidecar().Running())
	}
	conn, err := amqp.Dial(n.SidecarURL)
	if err != nil {
		t.Fatalf("dial the sidecar: %v", err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("via-sidecar", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	publishConfirmed(t, ch, "via-sidecar", "hello", true)
	if got := getOne(t, ch, "via-sidecar"); got != "hello" {
		t.Fatalf("got %q through the sidecar", got)
	}
	conn.Close()

	// A killed broker leaves the sidecar running, answering TCP but not AMQP.
	if err := n.Kill(); err != nil {
		t.Fatal(err)
	}
	if !n.Sidecar().Running() || amqpAnswers(context.Background(), n.SidecarAddr, "") {
		t.Fatal("after the broker's kill the sidecar is gone or still answers AMQP")
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !amqpAnswers(context.Background(), n.SidecarAddr, "") {
		t.Fatal("the sidecar does not answer once its broker is back")
	}

	sc := n.Sidecar()
	if err := sc.Pause(); err != nil {
		t.Fatal(err)
	}
	if amqpAnswers(context.Background(), n.SidecarAddr, "") {
		t.Fatal("a paused sidecar answers")
	}
	if err := sc.Unpause(); err != nil {
		t.Fatal(err)
	}
	if err := sc.Kill(); err != nil {
		t.Fatal(err)
	}
	if sc.Running() || !refused(n.SidecarAddr) {
		t.Fatal("a killed sidecar still runs or accepts connections")
	}
	if err := sc.Restart(context.Background()); err != nil {
		t.Fatalf("restart of a killed sidecar: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sc.Stop(ctx); err != nil || sc.Running() {
		t.Fatalf("graceful stop: %v, running %v", err, sc.Running())
	}
	// A paused broker answers nothing, and can still be stopped gracefully.
	if err := n.Pause(); err != nil {
		t.Fatal(err)
	}
	if !n.Running() || amqpAnswers(context.Background(), n.AMQPAddr, "") {
		t.Fatal("a paused broker is not running or answers")
	}
	if err := n.Stop(ctx); err != nil || n.Running() {
		t.Fatalf("graceful stop of a paused broker: %v, running %v", err, n.Running())
	}
	if err := n.Partition(ctx); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("Partition on the local backend: got %v, want ErrNotSupported", err)
	}
	if err := g.Nodes[1].Sidecar().Start(ctx); err == nil {
		t.Fatal("starting a running sidecar did not fail")
	}
}
