package testenv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Group is a set of independent single-node brokers started together.
// Its methods are safe for concurrent use.
type Group struct {
	// Nodes are the brokers, in index order.
	Nodes []*Node
	// ID is a short random name that node names and directories carry.
	ID string
	// Dir is the root of the group's data and log directories (local
	// backend). It is removed by Close unless kept.
	Dir string
	// Secret and AdminToken are the sidecars' gm.secret and admin.token
	// with Options.Group (given or random); empty otherwise.
	Secret, AdminToken string

	opts Options
	be   Driver

	keep atomic.Bool // read by the signal handler without mu

	mu       sync.Mutex // guards closed, closeErr; held during Close
	closed   bool
	closeErr error
}

// Start starts a group for a test and registers t.Cleanup to close it. On a
// failed test (t.Failed) the local backend keeps the directories and logs
// their paths; the docker backend attaches the logs of every container to
// the test output. Start calls t.Fatal when the group does not start; the error
// holds the tail of the failing node's log.
func Start(t testing.TB, opts Options) *Group {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = t.Logf
	}
	g, err := StartGroup(t.Context(), opts)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			g.Keep()
			for _, n := range g.Nodes {
				t.Logf("testenv: test failed; %s", n.rt.FailureLogs())
			}
		}
		if err := g.Close(); err != nil {
			t.Errorf("testenv: close: %v", err)
		}
	})
	return g
}

// StartGroup starts opts.Nodes brokers in parallel and returns when all of
// them are ready: their AMQP port answers and `rabbitmqctl await_startup`
// succeeded. On error nothing of the group is left running; the
// directories are kept (the error names them) so the logs can be read.
// The caller must Close the group.
func StartGroup(ctx context.Context, opts Options) (*Group, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	be, err := newBackend(opts)
	if err != nil {
		return nil, err
	}
	g := &Group{opts: opts, be: be}
	g.keep.Store(opts.KeepDirs)
	if err := be.Setup(ctx, g); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	for i := 0; i < opts.Nodes; i++ {
		n := &Node{Index: i, group: g}
		rt, err := be.NewNode(g, n)
		if err != nil {
			g.Keep()
			return nil, errors.Join(err, g.Close())
		}
		n.rt = rt
		g.Nodes = append(g.Nodes, n)
	}
	// From here the signal handler may read g.Nodes; it is not changed again.
	register(g)

	// The first node that fails stops the others' starts: the group is
	// lost anyway. Their "canceled" errors are left out of the result.
	began := time.Now()
	startCtx, stopStarts := context.WithCancel(ctx)
	defer stopStarts()
	errs := make([]error, len(g.Nodes))
	var wg sync.WaitGroup
	for i, n := range g.Nodes {
		wg.Go(func() {
			if errs[i] = n.Start(startCtx); errs[i] != nil {
				stopStarts()
			}
		})
	}
	wg.Wait()
	if ctx.Err() == nil {
		for i, err := range errs {
			if errors.Is(err, context.Canceled) {
				errs[i] = nil
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		g.Keep()
		if cerr := g.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		if g.Dir == "" {
			return nil, fmt.Errorf("%w\ntestenv: group %s failed to start", err, g.ID)
		}
		return nil, fmt.Errorf("%w\ntestenv: group %s failed to start; kept its directories in %s (remove them with testenv.Cleanup or `go run ./testenv/cmd/testenv cleanup` once this process is gone)", err, g.ID, g.Dir)
	}
	opts.Logger("testenv: group %s: %d broker(s) ready in %.1fs", g.ID, len(g.Nodes), time.Since(began).Seconds())
	if opts.Group != nil {
		if err := g.form(ctx); err != nil {
			g.Keep()
			if cerr := g.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
			if g.Dir != "" {
				err = fmt.Errorf("%w\ntestenv: kept the group's directories in %s", err, g.Dir)
			}
			return nil, err
		}
	}
	return g, nil
}

// Keep makes Close leave the group's directories in place.
func (g *Group) Keep() { g.keep.Store(true) }

// Close kills every broker of the group (SIGKILL to each broker's process
// group and its helper processes), waits until they are gone, and removes
// the directories unless kept. It is idempotent; later calls return the
// first call's error.
func (g *Group) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return g.closeErr
	}
	g.closed = true
	errs := make([]error, len(g.Nodes)+1) // every node's, then the teardown's
	var wg sync.WaitGroup
	for i, n := range g.Nodes {
		wg.Go(func() { errs[i] = n.close() })
	}
	wg.Wait()
	unregister(g)
	errs[len(g.Nodes)] = g.be.Teardown(g, g.keep.Load())
	g.closeErr = errors.Join(errs...)
	return g.closeErr
}

// URLs returns the AMQP URL of every node, in index order.
func (g *Group) URLs() []string {
	urls := make([]string, len(g.Nodes))
	for i, n := range g.Nodes {
		urls[i] = n.URL
	}
	return urls
}

// emergencyKill kills every broker without waiting for operations in
// progress, then removes the directories unless kept. Used on signals
// (signals.go); g.Nodes is complete before the group is registered there.
func (g *Group) emergencyKill() {
	for _, n := range g.Nodes {
		n.rt.EmergencyKill()
	}
	if !g.keep.Load() {
		_ = g.be.Teardown(g, false)
	}
}

// Node is one single-node broker of a group. The exported fields are set
// when StartGroup returns and do not change afterwards (a restart reuses
// the ports). Its methods are safe for concurrent use; Start, Stop and Kill
// run one at a time.
type Node struct {
	// Index is the node's position in Group.Nodes.
	Index int
	// Name is the Erlang node name, e.g. "mpt-3f2a9c01-0@localhost"
	// (local) or "rabbit@mpt-3f2a9c01-0" (docker).
	Name string
	// Host is the node's host name on the group's private network
	// (docker backend; empty for local): peers reach its broker at
	// Host:5672 and its sidecar at Host:5673.
	Host string
	// AMQPAddr is "127.0.0.1:PORT": the broker, from this machine.
	AMQPAddr string
	// URL is "amqp://guest:guest@127.0.0.1:PORT/".
	URL string
	// SidecarAddr and SidecarURL reach the node's sidecar from this
	// machine, when Options.Sidecar is set ("" otherwise).
	SidecarAddr, SidecarURL string
	// SidecarPort is the host port of SidecarAddr.
	SidecarPort int
	// Member is the node's name in its mirrored group, "node-<Index>",
	// with Options.Group ("" otherwise): the name the admin API's views,
	// list_queues' slave_pids and ha-mode "nodes" policies use.
	Member string
	// AdminAddr ("127.0.0.1:PORT") and AdminURL ("http://127.0.0.1:PORT")
	// reach the sidecar's admin HTTP API from this machine, with
	// Options.Group. Node.View reads the group's view there.
	AdminAddr, AdminURL string
	// GMAddr and RaftAddr are the sidecar's ring and raft addresses as its
	// peers reach them (Options.Group).
	GMAddr, RaftAddr string
	// SidecarConfig is the sidecar's config file with Options.Group (local
	// backend): `mirrorproxy ctl --config FILE list_queues` works with it.
	SidecarConfig string
	// RaftDir is the sidecar's raft.data_dir (local backend; empty with
	// GroupOptions.RaftInMemory). A restarted sidecar keeps it.
	RaftDir string
	// MgmtURL is "http://127.0.0.1:PORT" when Options.Management is set.
	MgmtURL string
	// AMQPPort, DistPort and MgmtPort are the node's ports (MgmtPort is 0
	// without management).
	AMQPPort, DistPort, MgmtPort int
	// DataDir is RABBITMQ_MNESIA_BASE; LogDir is RABBITMQ_LOG_BASE (local
	// backend; the docker backend keeps them inside the containers).
	DataDir, LogDir string
	// LogFile is the broker's own log; ConsoleLog holds its stdout and
	// stderr (early boot errors such as a bad config land there). Local
	// backend only: in containers the broker logs to the console, read
	// with LogTail.
	LogFile, ConsoleLog string

	group *Group
	rt    NodeDriver
	opMu  sync.Mutex
	gone  bool // closed with its group
}

// Start starts the node (again, after Kill or Stop) on the same ports and
// data, and returns once it is ready.
func (n *Node) Start(ctx context.Context) error {
	n.opMu.Lock()
	defer n.opMu.Unlock()
	if n.gone {
		return fmt.Errorf("testenv: node %s: its group is closed", n.Name)
	}
	began := time.Now()
	if err := n.rt.Start(ctx); err != nil {
		return err
	}
	n.group.opts.Logger("testenv: %s ready in %.1fs on %s", n.Name, time.Since(began).Seconds(), n.AMQPAddr)
	return nil
}

// Stop stops the broker gracefully (SIGTERM, which RabbitMQ handles as
// `rabbitmqctl stop`) and waits until it is gone. When ctx ends first the
// broker is killed and the error says so. Stopping a stopped node is a
// no-op.
func (n *Node) Stop(ctx context.Context) error {
	n.opMu.Lock()
	defer n.opMu.Unlock()
	return n.rt.Stop(ctx)
}

// Kill SIGKILLs the broker (its process group and helper processes such as
// erl_child_setup and inet_gethost, never the shared epmd) and waits until
// they are gone. Killing a stopped node is a no-op.
func (n *Node) Kill() error {
	n.opMu.Lock()
	defer n.opMu.Unlock()
	return n.rt.Kill()
}

// Running reports whether the broker process is alive (started and not
// exited). It does not check readiness.
func (n *Node) Running() bool { return n.rt.Running() }

// Ctl runs `rabbitmqctl -n NODE ARGS...` with the group's Erlang cookie and
// returns its combined output. A non-zero exit is an error that includes
// the output.
func (n *Node) Ctl(ctx context.Context, args ...string) (string, error) {
	return n.rt.Ctl(ctx, args...)
}

// LogTail returns up to the last lines lines of the broker's console output
// and of its log file, labelled, for error messages.
func (n *Node) LogTail(lines int) string { return n.rt.LogTail(lines) }

func (n *Node) close() error {
	n.opMu.Lock()
	defer n.opMu.Unlock()
	n.gone = true
	return n.rt.Close()
}

// StartError is returned when a broker does not become ready. Its message
// includes the tail of the broker's console output and log.
type StartError struct {
	// Node is the node's name; Dir the group's directory (kept).
	Node, Dir string
	// Err is what went wrong (process exit, timeout).
	Err error
	// LogTail is the tail of the node's console output and log.
	LogTail string
	// retryable says a new attempt (new ports, or a moment later) may
	// succeed: the ports or the node name were in use.
	retryable bool
}

func (e *StartError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "testenv: node %s did not start: %v", e.Node, e.Err)
	if e.LogTail != "" {
		b.WriteString("\n")
		b.WriteString(e.LogTail)
	}
	return b.String()
}

func (e *StartError) Unwrap() error { return e.Err }
