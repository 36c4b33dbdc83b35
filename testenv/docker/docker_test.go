//go:build linux

package docker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/mirrorproxy/mirrorproxy/testenv"
	"github.com/mirrorproxy/mirrorproxy/testenv/internal/backend"
)

// dockerTest skips a container test under -short or when no Docker
// engine answers, saying which; it registers the goroutine leak check to
// run after the group's cleanup.
func dockerTest(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts containers; skipped with -short")
	}
	if err := Available(context.Background()); err != nil {
		t.Skipf("SKIP container test: %v (start a Docker engine, or set DOCKER_HOST, to run it)", err)
	}
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// startDocker starts a docker group with sidecars for a test.
func startDocker(t *testing.T, nodes int) *testenv.Group {
	t.Helper()
	began := time.Now()
	g := testenv.Start(t, testenv.Options{Backend: testenv.BackendDocker, Nodes: nodes, Sidecar: &testenv.SidecarOptions{}})
	t.Logf("TIMING docker group of %d ready in %.1fs (images included)", nodes, time.Since(began).Seconds())
	return g
}

// answers reports whether addr answers the AMQP protocol header. Behind
// docker's port forwarding a dead broker shows as a connection that is
// accepted and then reset, never as "connection refused", so this is the
// observable "refuses connections".
func answers(addr string) bool { return backend.AMQPAnswers(context.Background(), addr, "") }

// reachable reports whether from can open a TCP connection to to's broker
// port over the group's network, tried from inside from's broker container.
func reachable(t *testing.T, from, to *testenv.Node) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := from.Exec(ctx, "timeout", "3", "bash", "-c", "exec 3<>/dev/tcp/"+to.Host+"/"+brokerPort)
	return err == nil
}

func dialURL(t *testing.T, url string) (*amqp.Connection, *amqp.Channel) {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		t.Fatalf("channel on %s: %v", url, err)
	}
	return conn, ch
}

// groupObjects lists the containers and networks labelled with group id.
func groupObjects(t *testing.T, id string) []string {
	t.Helper()
	ctx := context.Background()
	cli, err := newDockerClient(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	f := make(client.Filters).Add("label", labelGroup+"="+id)
	cs, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	ns, err := cli.NetworkList(ctx, client.NetworkListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range cs.Items {
		out = append(out, "container "+firstOr(c.Names, c.ID))
	}
	for _, n := range ns.Items {
		out = append(out, "network "+n.Name)
	}
	return out
}

func TestDockerThreeNodesThroughSidecar(t *testing.T) {
	dockerTest(t)
	g := startDocker(t, 3)
	if len(g.Nodes) != 3 || g.Dir != "" {
		t.Fatalf("got %d nodes, dir %q", len(g.Nodes), g.Dir)
	}
	seen := map[string]bool{}
	for _, n := range g.Nodes {
		if n.Host == "" || n.Name != "rabbit@"+n.Host || n.SidecarAddr == "" || n.SidecarURL == "" || seen[n.AMQPAddr] || seen[n.SidecarAddr] {
			t.Fatalf("unexpected node fields: %+v", n)
		}
		seen[n.AMQPAddr], seen[n.SidecarAddr] = true, true
		if !strings.HasPrefix(n.AMQPAddr, "127.0.0.1:") || !strings.HasPrefix(n.SidecarAddr, "127.0.0.1:") {
			t.Fatalf("%s: addresses %s, %s not on loopback", n.Name, n.AMQPAddr, n.SidecarAddr)
		}
		if !n.Running() || !n.Sidecar().Running() {
			t.Fatalf("%s: broker running %v, sidecar running %v", n.Name, n.Running(), n.Sidecar().Running())
		}
	}

	// Publish and consume through node 0's sidecar.
	conn, ch := dialURL(t, g.Nodes[0].SidecarURL)
	defer conn.Close()
	if _, err := ch.QueueDeclare("through-sidecar", true, false, false, false, nil); err != nil {
		t.Fatalf("declare: %v", err)
	}
	const n = 20
	for i := range n {
		publishConfirmed(t, ch, "through-sidecar", fmt.Sprintf("m%d", i), true)
	}
	deliveries, err := ch.Consume("through-sidecar", "", false, false, false, false, nil)
	if err != nil {
		t.Fatalf("consume: %v", err)
	}
	timeout := time.After(30 * time.Second)
	for i := range n {
		select {
		case d := <-deliveries:
			if want := fmt.Sprintf("m%d", i); string(d.Body) != want {
				t.Fatalf("delivery %d: got %q, want %q", i, d.Body, want)
			}
			if err := d.Ack(false); err != nil {
				t.Fatalf("ack: %v", err)
			}
		case <-timeout:
			t.Fatalf("got %d of %d deliveries", i, n)
		}
	}

	// The message went to node 0's broker, and only there.
	out, err := g.Nodes[0].Ctl(context.Background(), "list_queues", "name", "--quiet")
	if err != nil || !strings.Contains(out, "through-sidecar") {
		t.Fatalf("list_queues on node 0: %q, %v", out, err)
	}
	conn1, ch1 := dialURL(t, g.Nodes[1].URL)
	defer conn1.Close()
	_, err = ch1.QueueDeclarePassive("through-sidecar", true, false, false, false, nil)
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.NotFound {
		t.Fatalf("passive declare on node 1: got %v, want 404 NOT_FOUND", err)
	}

	// The nodes reach each other by host name on the group network.
	for _, from := range g.Nodes {
		for _, to := range g.Nodes {
			if from != to && !reachable(t, from, to) {
				t.Fatalf("%s cannot reach %s", from.Host, to.Host)
			}
		}
	}
}

func TestDockerFaults(t *testing.T) {
	dockerTest(t)
	g := startDocker(t, 2)
	n0, n1 := g.Nodes[0], g.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	conn, ch := dialURL(t, n0.URL)
	if _, err := ch.QueueDeclare("durable-q", true, false, false, false, nil); err != nil {
		t.Fatalf("declare: %v", err)
	}
	publishConfirmed(t, ch, "durable-q", "survivor", true)
	conn.Close()
	// As in restartKeepsDurable: have mnesia write the queue's record out
	// of its log cache, or a SIGKILL right after the declare may lose it
	// (seen once here).
	if _, err := n0.Ctl(ctx, "eval", "mnesia:dump_log()."); err != nil {
		t.Fatalf("mnesia:dump_log: %v", err)
	}

	t.Run("KillBroker", func(t *testing.T) {
		if err := n0.Kill(); err != nil {
			t.Fatal(err)
		}
		if n0.Running() {
			t.Fatal("broker still running after Kill")
		}
		if answers(n0.AMQPAddr) || answers(n0.SidecarAddr) {
			t.Fatal("a killed broker still answers, directly or through its sidecar")
		}
		if !n0.Sidecar().Running() {
			t.Fatal("killing the broker took the sidecar down")
		}
		if err := n0.Kill(); err != nil {
			t.Fatalf("killing a killed broker: %v", err)
		}
		if err := n0.Start(ctx); err != nil {
			t.Fatalf("start after kill: %v", err)
		}
		if !answers(n0.AMQPAddr) || !answers(n0.SidecarAddr) {
			t.Fatal("restarted broker does not answer on its addresses")
		}
		conn, ch := dialURL(t, n0.SidecarURL)
		defer conn.Close()
		if got := getOne(t, ch, "durable-q"); got != "survivor" {
			t.Fatalf("got %q after kill and start, want survivor", got)
		}
		publishConfirmed(t, ch, "durable-q", "survivor", true)
	})

	t.Run("StopBroker", func(t *testing.T) {
		stopCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		if err := n0.Stop(stopCtx); err != nil {
			t.Fatal(err)
		}
		_, broker, _ := dockerNodeOf(t, n0).ids()
		if st := dockerNodeOf(t, n0).exitStatus(broker); !strings.Contains(st, "exit code 0") {
			t.Fatalf("graceful stop: %s, want exit code 0", st)
		}
		if answers(n0.AMQPAddr) {
			t.Fatal("a stopped broker still answers")
		}
		if err := n0.Restart(ctx); err != nil {
			t.Fatalf("restart of a stopped broker: %v", err)
		}
		if !answers(n0.AMQPAddr) {
			t.Fatal("restarted broker does not answer")
		}
	})

	t.Run("PauseBroker", func(t *testing.T) {
		if err := n0.Pause(); err != nil {
			t.Fatal(err)
		}
		if !n0.Running() {
			t.Fatal("a paused broker is not running")
		}
		if answers(n0.AMQPAddr) {
			t.Fatal("a paused broker answers")
		}
		if err := n0.Unpause(); err != nil {
			t.Fatal(err)
		}
		if !answers(n0.AMQPAddr) {
			t.Fatal("an unpaused broker does not answer")
		}
	})

	t.Run("Partition", func(t *testing.T) {
		if !reachable(t, n0, n1) || !reachable(t, n1, n0) {
			t.Fatal("nodes do not reach each other before the partition")
		}
		if err := n0.Partition(ctx); err != nil {
			t.Fatal(err)
		}
		if err := n0.Partition(ctx); err != nil {
			t.Fatalf("partitioning a partitioned node: %v", err)
		}
		if reachable(t, n0, n1) {
			t.Fatal("a partitioned node reaches the others")
		}
		if reachable(t, n1, n0) {
			t.Fatal("the others reach a partitioned node")
		}
		if !answers(n0.AMQPAddr) || !answers(n0.SidecarAddr) {
			t.Fatal("a partitioned node does not answer on its own addresses")
		}
		conn, _ := dialURL(t, n0.SidecarURL)
		conn.Close()
		if err := n0.Heal(ctx); err != nil {
			t.Fatal(err)
		}
		if err := n0.Heal(ctx); err != nil {
			t.Fatalf("healing a healed node: %v", err)
		}
		if !reachable(t, n0, n1) || !reachable(t, n1, n0) {
			t.Fatal("healing did not restore the node's connectivity")
		}
	})

	t.Run("Sidecar", func(t *testing.T) {
		sc := n0.Sidecar()
		if err := sc.Kill(); err != nil {
			t.Fatal(err)
		}
		if sc.Running() || answers(n0.SidecarAddr) {
			t.Fatal("a killed sidecar is running or answers")
		}
		if !answers(n0.AMQPAddr) {
			t.Fatal("killing the sidecar took the broker down")
		}
		if err := sc.Start(ctx); err != nil {
			t.Fatalf("start the sidecar: %v", err)
		}
		if err := sc.Pause(); err != nil {
			t.Fatal(err)
		}
		if answers(n0.SidecarAddr) {
			t.Fatal("a paused sidecar answers")
		}
		if err := sc.Unpause(); err != nil {
			t.Fatal(err)
		}
		if err := sc.Restart(ctx); err != nil {
			t.Fatalf("restart the sidecar: %v", err)
		}
		if !answers(n0.SidecarAddr) {
			t.Fatal("a restarted sidecar does not answer")
		}
	})

	t.Run("Logs", func(t *testing.T) {
		logs := n0.Driver().FailureLogs()
		if !strings.Contains(logs, "Server startup complete") || !strings.Contains(logs, "--- sidecar container") {
			t.Fatalf("failure logs lack the broker's startup line or the sidecar's section:\n%s", logs)
		}
		if tail := n0.LogTail(5); !strings.Contains(tail, "last lines of the broker container") {
			t.Fatalf("log tail: %q", tail)
		}
	})
}

func TestDockerManagementNoSidecarAndErrors(t *testing.T) {
	dockerTest(t)
	// A broker image named by the caller (here the one testenv built,
	// by its moving tag).
	if _, err := EnsureBrokerImage(context.Background(), t.Logf); err != nil {
		t.Fatal(err)
	}
	g := testenv.Start(t, testenv.Options{Backend: testenv.BackendDocker, Management: true, BrokerImage: BrokerImageRepo + ":latest"})
	n := g.Nodes[0]
	if n.MgmtURL == "" {
		t.Fatal("no management URL")
	}
	req, err := http.NewRequest(http.MethodGet, n.MgmtURL+"/api/overview", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth("guest", "guest")
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET /api/overview: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/overview: %s", resp.Status)
	}
	if n.SidecarAddr != "" {
		t.Fatalf("sidecar address %q without Options.Sidecar", n.SidecarAddr)
	}
	if err := n.Sidecar().Kill(); !errors.Is(err, testenv.ErrNoSidecar) {
		t.Fatalf("sidecar Kill without a sidecar: got %v, want testenv.ErrNoSidecar", err)
	}
	conn, _ := dialURL(t, n.URL)
	conn.Close()
	if _, err := n.Ctl(context.Background(), "no_such_command"); err == nil {
		t.Fatal("Ctl with an unknown command did not fail")
	}
	if err := n.Start(context.Background()); err == nil {
		t.Fatal("starting a running node did not fail")
	}

	// A named image must be on the engine: testenv never pulls.
	_, err = testenv.StartGroup(context.Background(), testenv.Options{Backend: testenv.BackendDocker, BrokerImage: "mirrorproxy-testenv/no-such-image:1"})
	if err == nil || !strings.Contains(err.Error(), "no-such-image") || !strings.Contains(err.Error(), "not on this Docker engine") {
		t.Fatalf("missing broker image: got %v", err)
	}
}

// TestDockerCleanup checks that Close leaves nothing of the group, and
// that a group whose owner is dead is removed by Cleanup.
func TestDockerCleanup(t *testing.T) {
	dockerTest(t)
	ctx := context.Background()
	g, err := testenv.StartGroup(ctx, testenv.Options{Backend: testenv.BackendDocker, Nodes: 2, Sidecar: &testenv.SidecarOptions{}, Logger: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	if got := groupObjects(t, g.ID); len(got) != 7 { // 2 × (pod, broker, sidecar) + network
		t.Fatalf("group %s has %v, want 6 containers and a network", g.ID, got)
	}
	if err := g.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if got := groupObjects(t, g.ID); len(got) != 0 {
		t.Fatalf("after Close, group %s still has %v", g.ID, got)
	}
	if err := g.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}

	// A group of a dead owner (a crashed test process).
	fakeOwner = "999999999:1"
	dead, err := testenv.StartGroup(ctx, testenv.Options{Backend: testenv.BackendDocker, Logger: t.Logf})
	fakeOwner = ""
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	removed, err := Cleanup(ctx)
	if err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	t.Logf("cleanup removed %v", removed)
	if got := groupObjects(t, dead.ID); len(got) != 0 {
		t.Fatalf("after Cleanup, the dead owner's group %s still has %v", dead.ID, got)
	}
	if err := dead.Close(); err != nil {
		t.Fatalf("close of a group cleaned up under it: %v", err)
	}
}

// startDockerHelper runs the test binary as a process that starts a
// one-node docker group and waits; it returns the process and the group ID.
func startDockerHelper(t *testing.T) (*exec.Cmd, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=docker")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	id, ok := strings.CutPrefix(strings.TrimSpace(line), "READY ")
	if err != nil || !ok || id == "" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("helper did not report ready: %q, %v", line, err)
	}
	if got := groupObjects(t, id); len(got) != 3 { // pod, broker, network
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("helper's group %s has %v, want 2 containers and a network", id, got)
	}
	return cmd, id
}

// TestDockerInterruptAndHardKill: SIGINT to a process with an open docker
// group removes its containers and network and still ends the process by
// SIGINT; after a SIGKILL they stay until the cleanup of a later start
// removes them.
func TestDockerInterruptAndHardKill(t *testing.T) {
	dockerTest(t)
	cmd, id := startDockerHelper(t)
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); !signalledBy(err, syscall.SIGINT) {
		t.Fatalf("helper ended with %v, want death by SIGINT", err)
	}
	if got := groupObjects(t, id); len(got) != 0 {
		t.Fatalf("after SIGINT of its owner, group %s still has %v", id, got)
	}

	cmd, id = startDockerHelper(t)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); !signalledBy(err, syscall.SIGKILL) {
		t.Fatalf("helper ended with %v, want SIGKILL", err)
	}
	if got := groupObjects(t, id); len(got) != 3 {
		t.Fatalf("after SIGKILL of its owner, group %s has %v, want everything still there", id, got)
	}
	// The next group's start removes what the dead owner left.
	testenv.Start(t, testenv.Options{Backend: testenv.BackendDocker})
	if got := groupObjects(t, id); len(got) != 0 {
		t.Fatalf("a later start did not remove the dead owner's group %s: %v", id, got)
	}
	if _, err := Cleanup(context.Background()); err != nil {
		t.Fatalf("cleanup with nothing of dead owners left: %v", err)
	}
}
