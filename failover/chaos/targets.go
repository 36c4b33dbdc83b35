package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mirrorproxy/mirrorproxy/testenv"
)

// Targets on testenv groups: a mirrorproxy group (GroupTarget) and, for
// comparison, a RabbitMQ cluster of the same local brokers with classic
// mirrored or quorum queues (ClusterTarget).

// MirrorPattern is the pattern of the mirroring policies the targets set:
// the runner's default queue, "ha.chaos", matches it.
const MirrorPattern = `^ha\.`

// GroupOptions are testenv options for a 3-node mirrorproxy group whose
// policy mirrors MirrorPattern queues on every node, a rejoined node
// resyncing at once (ha-mode all, ha-sync-mode automatic). A stopped
// sidecar lets its sessions finish for 5s (the default 30s would make a
// graceful stop of a sidecar with clients take half a minute).
func GroupOptions() testenv.Options {
	return testenv.Options{
		Nodes: 3,
		Group: &testenv.GroupOptions{
			Policies: []testenv.Policy{{Name: "ha-all", Pattern: MirrorPattern, ApplyTo: "queues",
				Definition: map[string]any{"ha-mode": "all", "ha-sync-mode": "automatic"}}},
			ShutdownGrace: 5 * time.Second,
		},
	}
}

// poll runs f every interval until it returns nil or ctx ends.
func poll(ctx context.Context, interval time.Duration, what string, f func(ctx context.Context) error) error {
	for {
		err := f(ctx)
		if err == nil {
			return nil
		}
		if !sleep(ctx, interval) {
			return fmt.Errorf("%s: %w (last: %v)", what, ctx.Err(), err)
		}
	}
}

// GroupTarget is a mirrorproxy group of testenv (Options.Group): clients
// use the sidecars; the master is the node a majority of the sidecars
// names.
type GroupTarget struct {
	G *testenv.Group
}

// NewGroupTarget returns the target for g, a group started with
// Options.Group (for instance GroupOptions()).
func NewGroupTarget(g *testenv.Group) *GroupTarget { return &GroupTarget{G: g} }

func (t *GroupTarget) Name() string          { return "mirrorproxy" }
func (t *GroupTarget) Nodes() int            { return len(t.G.Nodes) }
func (t *GroupTarget) NodeName(i int) string { return t.G.Nodes[i].Member }

func (t *GroupTarget) Addrs() []string {
	out := make([]string, len(t.G.Nodes))
	for i, n := range t.G.Nodes {
		out[i] = n.SidecarURL
	}
	return out
}

func (t *GroupTarget) Proc(i int, p Part) Proc {
	switch p {
	case PartBroker:
		return t.G.Nodes[i].Broker()
	case PartSidecar:
		return t.G.Nodes[i].Sidecar()
	}
	return nil
}

// Prepare declares queue through the master's sidecar and waits until it
// is synchronised on every node.
func (t *GroupTarget) Prepare(ctx context.Context, queue string, args amqp.Table) error {
	m, err := t.WaitMaster(ctx, queue, -1)
	if err != nil {
		return err
	}
	if err := DeclareQueue(ctx, t.G.Nodes[m].SidecarURL, queue, args); err != nil {
		return err
	}
	return t.WaitReady(ctx, queue)
}

func (t *GroupTarget) index(n *testenv.Node) int {
	for i, x := range t.G.Nodes {
		if x == n {
			return i
		}
	}
	return -1
}

func (t *GroupTarget) Master(ctx context.Context, _ string) (int, error) {
	n, err := t.G.Master(ctx)
	if err != nil {
		return -1, err
	}
	return t.index(n), nil
}

func (t *GroupTarget) WaitMaster(ctx context.Context, _ string, exclude int) (int, error) {
	var ex []*testenv.Node
	if exclude >= 0 {
		ex = append(ex, t.G.Nodes[exclude])
	}
	n, err := t.G.WaitMaster(ctx, ex...)
	if err != nil {
		return -1, err
	}
	return t.index(n), nil
}

// WaitReady waits until every sidecar lists every node and one master
// (testenv's WaitFormed), and the master's admin API lists queue with
// every other node as a synchronised mirror.
func (t *GroupTarget) WaitReady(ctx context.Context, queue string) error {
	if err := t.G.WaitFormed(ctx); err != nil {
		return err
	}
	return poll(ctx, 200*time.Millisecond, "waiting for "+queue+" to be synchronised on every mirror", func(ctx context.Context) error {
		m, err := t.G.Master(ctx)
		if err != nil {
			return err
		}
		synced, err := syncedMirrors(ctx, m.AdminURL, queue)
		if err != nil {
			return err
		}
		var missing []string
		for _, n := range t.G.Nodes {
			if n != m && !strings.Contains(" "+strings.Join(synced, " ")+" ", " "+n.Member+" ") {
				missing = append(missing, n.Member)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("master %s lists %v as synchronised mirrors of %s, not %v", m.Member, synced, queue, missing)
		}
		return nil
	})
}

// adminClient keeps no idle connections: nothing lingers after a run
// (the package's tests check for goroutine leaks).
var adminClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second}

// syncedMirrors reads queue's synchronised_slave_pids (in vhost "/") from
// the admin API at base.
func syncedMirrors(ctx context.Context, base, queue string) ([]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/queues?vhost="+url.QueryEscape("/"), nil)
	if err != nil {
		return nil, err
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s/api/queues: %s: %s", base, resp.Status, strings.TrimSpace(string(body)))
	}
	var qs []struct {
		Name   string   `json:"name"`
		Vhost  string   `json:"vhost"`
		Synced []string `json:"synchronised_slave_pids"`
	}
	if err := json.Unmarshal(body, &qs); err != nil {
		return nil, fmt.Errorf("GET %s/api/queues: %w", base, err)
	}
	for _, q := range qs {
		if q.Name == queue && (q.Vhost == "/" || q.Vhost == "") {
			return q.Synced, nil
		}
	}
	return nil, fmt.Errorf("GET %s/api/queues: no queue %s", base, queue)
}

// ClusterTarget is a RabbitMQ cluster of a testenv group's brokers (see
// FormCluster): clients use the brokers; the master is the node of the
// queue's process (a classic queue's master, a quorum queue's leader), as
// rabbitmqctl list_queues shows it.
type ClusterTarget struct {
	G *testenv.Group
	// Quorum makes Name say so and WaitReady wait for every member
	// online; the queue type itself is the queue's x-queue-type argument
	// (Scenario.QueueArgs).
	Quorum bool

	// lastGood is the node rabbitmqctl last answered on, asked first (a
	// frozen node makes it wait ctlTimeout).
	lastGood atomic.Int32
}

// FormCluster joins every broker of g to the first one (rabbitmqctl
// stop_app, join_cluster, start_app; testenv's local brokers share one
// Erlang cookie) and sets a policy mirroring MirrorPattern classic queues
// on every node with automatic sync. g must be started without sidecars.
func FormCluster(ctx context.Context, g *testenv.Group) error {
	first := g.Nodes[0]
	for _, n := range g.Nodes[1:] {
		for _, args := range [][]string{{"stop_app"}, {"join_cluster", first.Name}, {"start_app"}} {
			if out, err := n.Ctl(ctx, args...); err != nil {
				return fmt.Errorf("chaos: cluster %s with %s: rabbitmqctl %v: %w\n%s", n.Name, first.Name, args, err, out)
			}
		}
	}
	if out, err := first.Ctl(ctx, "await_online_nodes", fmt.Sprint(len(g.Nodes))); err != nil {
		return fmt.Errorf("chaos: waiting for %d cluster nodes: %w\n%s", len(g.Nodes), err, out)
	}
	if out, err := first.Ctl(ctx, "set_policy", "--apply-to", "queues", "ha-all", MirrorPattern,
		`{"ha-mode":"all","ha-sync-mode":"automatic"}`); err != nil {
		return fmt.Errorf("chaos: set the ha-all policy: %w\n%s", err, out)
	}
	return nil
}

func (t *ClusterTarget) Name() string {
	if t.Quorum {
		return "rabbitmq-quorum"
	}
	return "rabbitmq-classic-mirrored"
}
func (t *ClusterTarget) Nodes() int            { return len(t.G.Nodes) }
func (t *ClusterTarget) NodeName(i int) string { return fmt.Sprintf("node-%d", i) }
func (t *ClusterTarget) Addrs() []string       { return t.G.URLs() }

func (t *ClusterTarget) Proc(i int, p Part) Proc {
	if p == PartBroker {
		return t.G.Nodes[i].Broker()
	}
	return nil
}

func (t *ClusterTarget) Prepare(ctx context.Context, queue string, args amqp.Table) error {
	if err := DeclareQueue(ctx, t.G.Nodes[0].URL, queue, args); err != nil {
		return err
	}
	return t.WaitReady(ctx, queue)
}

// ctlTimeout bounds one rabbitmqctl call: a frozen node answers nothing.
const ctlTimeout = 15 * time.Second

// listQueue runs `rabbitmqctl list_queues name COLUMNS...` on the first
// node that answers (running brokers only) and returns queue's columns.
func (t *ClusterTarget) listQueue(ctx context.Context, queue string, columns ...string) ([]string, error) {
	var errs []error
	first := int(t.lastGood.Load())
	for k := range t.G.Nodes {
		i := (first + k) % len(t.G.Nodes)
		n := t.G.Nodes[i]
		if !n.Running() {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, ctlTimeout)
		out, err := n.Ctl(cctx, append([]string{"-q", "--no-table-headers", "list_queues", "name"}, columns...)...)
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		t.lastGood.Store(int32(i))
		for line := range strings.Lines(out) {
			f := strings.Split(strings.TrimRight(line, "\r\n"), "\t")
			if len(f) == len(columns)+1 && f[0] == queue {
				return f[1:], nil
			}
		}
		errs = append(errs, fmt.Errorf("list_queues on %s: no queue %s in %q", n.Name, queue, out))
	}
	if len(errs) == 0 {
		return nil, errors.New("no broker running")
	}
	return nil, errors.Join(errs...)
}

// pidNode is the Erlang node of a pid as rabbitmqctl prints it,
// "<node@host.1.2.3>".
var pidNode = regexp.MustCompile(`<([^<>]+@[^<>.]+)(?:\.\d+)+>`)

func (t *ClusterTarget) nodeIndex(name string) int {
	for i, n := range t.G.Nodes {
		if n.Name == name {
			return i
		}
	}
	return -1
}

func (t *ClusterTarget) Master(ctx context.Context, queue string) (int, error) {
	cols, err := t.listQueue(ctx, queue, "pid")
	if err != nil {
		return -1, err
	}
	m := pidNode.FindStringSubmatch(cols[0])
	if m == nil {
		return -1, fmt.Errorf("queue %s: no node in pid %q", queue, cols[0])
	}
	i := t.nodeIndex(m[1])
	if i < 0 {
		return -1, fmt.Errorf("queue %s: pid %q is on no node of the group", queue, cols[0])
	}
	return i, nil
}

func (t *ClusterTarget) WaitMaster(ctx context.Context, queue string, exclude int) (int, error) {
	master := -1
	err := poll(ctx, 500*time.Millisecond, "waiting for a master of "+queue, func(ctx context.Context) error {
		m, err := t.Master(ctx, queue)
		if err != nil {
			return err
		}
		if m == exclude {
			return fmt.Errorf("the master is still %s", t.NodeName(m))
		}
		master = m
		return nil
	})
	return master, err
}

// WaitReady waits until every broker runs and queue is whole on each: a
// classic queue's mirrors all synchronised, a quorum queue's members all
// online.
func (t *ClusterTarget) WaitReady(ctx context.Context, queue string) error {
	return poll(ctx, time.Second, "waiting for "+queue+" to be whole on every node", func(ctx context.Context) error {
		col := "synchronised_slave_pids"
		want := len(t.G.Nodes) - 1
		if t.Quorum {
			col, want = "online", len(t.G.Nodes)
		}
		cols, err := t.listQueue(ctx, queue, col)
		if err != nil {
			return err
		}
		got := len(pidNode.FindAllString(cols[0], -1)) // pids of the synchronised mirrors
		if t.Quorum {
			got = strings.Count(cols[0], "@") // node names of the online members
		}
		if got < want {
			return fmt.Errorf("queue %s: %s is %s, want %d nodes", queue, col, cols[0], want)
		}
		return nil
	})
}
