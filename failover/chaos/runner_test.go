package chaos

import (
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/mirrorproxy/mirrorproxy/testenv"
	// The docker backend, for MIRRORPROXY_TESTENV=docker.
	_ "github.com/mirrorproxy/mirrorproxy/testenv/docker"
)

var (
	chaosLong   = flag.Bool("chaos.long", false, "run the long chaos suite (every fault kind, a long mixed run, RabbitMQ's own queues); also MIRRORPROXY_CHAOS=long")
	chaosSeed   = flag.Int64("chaos.seed", 1, "seed of the chaos runs (mirror choice, the mixed run's schedule)")
	chaosFaults = flag.Int("chaos.faults", 12, "faults in the long suite's mixed run")
	chaosMoves  = flag.Bool("chaos.moves", false, "run the mirrorproxy groups with raft.move_sessions on (experimental); also "+EnvChaosMoves+"=1")
	chaosReport = flag.String("chaos.report", "", "append the runs' Markdown rows to this file")
	chaosKeep   = flag.String("chaos.keep", "", "write every run's report and history to a file in this directory (failed runs' are always kept)")
)

// EnvChaos set to "long" runs the long suite like -chaos.long.
const EnvChaos = "MIRRORPROXY_CHAOS"

// EnvChaosMoves=1 turns raft.move_sessions on in the chaos groups.
const EnvChaosMoves = "MIRRORPROXY_CHAOS_MOVES"

func longSuite() bool { return *chaosLong || os.Getenv(EnvChaos) == "long" }

// ---- pure parts ----

func TestFaultKinds(t *testing.T) {
	kinds := FaultKinds()
	if len(kinds) != 12 {
		t.Fatalf("%d fault kinds, want 12", len(kinds))
	}
	seen := map[string]bool{}
	for _, f := range kinds {
		if seen[f.Kind()] {
			t.Errorf("%s twice", f.Kind())
		}
		seen[f.Kind()] = true
	}
	for _, want := range []string{"kill master broker", "kill mirror both", "freeze master sidecar", "stop mirror sidecar"} {
		if !seen[want] {
			t.Errorf("no %q in %v", want, kinds)
		}
	}
	bo := BrokerOnly(kinds)
	if len(bo) != 4 || slices.ContainsFunc(bo, Fault.needsSidecar) {
		t.Errorf("BrokerOnly: %v", bo)
	}
}

func TestRandomSchedule(t *testing.T) {
	a := RandomSchedule(7, 50, FaultKinds(), 2*time.Second, 6*time.Second)
	b := RandomSchedule(7, 50, FaultKinds(), 2*time.Second, 6*time.Second)
	if !slices.Equal(a, b) {
		t.Fatal("the same seed gave two schedules")
	}
	if c := RandomSchedule(8, 50, FaultKinds(), 2*time.Second, 6*time.Second); slices.Equal(a, c) {
		t.Fatal("two seeds gave one schedule")
	}
	kinds := map[string]bool{}
	for _, f := range a {
		kinds[f.Kind()] = true
		if f.Hold < 2*time.Second || f.Hold > 6*time.Second {
			t.Errorf("hold %v out of range", f.Hold)
		}
	}
	if len(kinds) < 8 {
		t.Errorf("50 faults cover only %d kinds", len(kinds))
	}
}

func TestFaultMetrics(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	id := func(p string, s uint64) MsgID { return MsgID{Producer: p, Seq: s} }
	ev := []Event{
		{At: ms(0), Kind: KindConnect, Client: "p0", Conn: 1},
		{At: ms(0), Kind: KindConnect, Client: "p1", Conn: 1},
		{At: ms(10), Kind: KindPublish, Client: "p0", Conn: 1, Msg: id("p0", 1), Attempt: 1},
		{At: ms(12), Kind: KindConfirm, Client: "p0", Conn: 1, Msg: id("p0", 1)},
		{At: ms(20), Kind: KindPublish, Client: "p1", Conn: 1, Msg: id("p1", 1), Attempt: 1},
		{At: ms(90), Kind: KindPublish, Client: "p0", Conn: 1, Msg: id("p0", 2), Attempt: 1},
		{At: ms(100), Kind: KindFault, Name: "kill master broker", Node: "node-0"},
		// p1's confirm of a message sent before the fault does not count.
		{At: ms(110), Kind: KindConfirm, Client: "p1", Conn: 1, Msg: id("p1", 1)},
		{At: ms(120), Kind: KindPublish, Client: "p1", Conn: 1, Msg: id("p1", 2), Attempt: 1},
		{At: ms(300), Kind: KindPublishFailed, Client: "p0", Conn: 1, Msg: id("p0", 2)},
		{At: ms(300), Kind: KindDisconnect, Client: "p0", Conn: 1},
		{At: ms(500), Kind: KindConnect, Client: "p0", Conn: 2},
		{At: ms(510), Kind: KindPublish, Client: "p0", Conn: 2, Msg: id("p0", 2), Attempt: 2},
		{At: ms(600), Kind: KindConfirm, Client: "p0", Conn: 2, Msg: id("p0", 2)},
		{At: ms(650), Kind: KindConfirm, Client: "p1", Conn: 1, Msg: id("p1", 2)},
		{At: ms(700), Kind: KindHeal, Name: "kill master broker", Node: "node-0"},
		{At: ms(800), Kind: KindFault, Name: "kill mirror broker", Node: "node-2"},
		{At: ms(810), Kind: KindPublish, Client: "p0", Conn: 2, Msg: id("p0", 3), Attempt: 1},
		{At: ms(820), Kind: KindConfirm, Client: "p0", Conn: 2, Msg: id("p0", 3)},
		{At: ms(830), Kind: KindPublish, Client: "p1", Conn: 1, Msg: id("p1", 3), Attempt: 1},
		{At: ms(900), Kind: KindHeal, Name: "kill mirror broker", Node: "node-2"},
	}
	fs := []FaultReport{{At: ms(100), Fault: Fault{Hold: ms(500)}}, {At: ms(800), Fault: Fault{Hold: ms(100)}}}
	faultMetrics(ev, fs)
	// p0 resumed at 600 (p0-2 re-sent at 510), p1 at 650 (p1-2 sent at 120).
	if fs[0].Resumed != ms(550) {
		t.Errorf("fault 1 resumed after %v, want 550ms", fs[0].Resumed)
	}
	// p0 waited from 90 to 600; p1 from 20 to 110, then 120 to 650.
	if want := (Window{Start: ms(120), Len: ms(530)}); fs[0].LongestWait != want {
		t.Errorf("fault 1 longest wait %v, want %v", fs[0].LongestWait, want)
	}
	// p1 never had p1-3 confirmed: still waiting at the end.
	if fs[1].Resumed != -1 {
		t.Errorf("fault 2 resumed after %v, want never (-1)", fs[1].Resumed)
	}
	if want := (Window{Start: ms(810), Len: ms(10)}); fs[1].LongestWait != want {
		t.Errorf("fault 2 longest wait %v, want %v (p1's open wait ends at its last event, 830ms: 0s)", fs[1].LongestWait, want)
	}
}

// ---- the runner against a fake target on the package's one broker ----

// fakeProc records what the runner does to it.
type fakeProc struct {
	name string
	log  *[]string
	mu   *sync.Mutex
	up   bool
	// onKill runs after a kill (the fake target's failover).
	onKill func()
}

func (p *fakeProc) rec(what string) {
	p.mu.Lock()
	*p.log = append(*p.log, what+" "+p.name)
	p.mu.Unlock()
}
func (p *fakeProc) Kill() error {
	p.rec("kill")
	p.mu.Lock()
	p.up = false
	p.mu.Unlock()
	if p.onKill != nil {
		p.onKill()
	}
	return nil
}
func (p *fakeProc) Stop(context.Context) error  { p.rec("stop"); p.setUp(false); return nil }
func (p *fakeProc) Start(context.Context) error { p.rec("start"); p.setUp(true); return nil }
func (p *fakeProc) Pause() error                { p.rec("pause"); return nil }
func (p *fakeProc) Unpause() error              { p.rec("unpause"); return nil }
func (p *fakeProc) Running() bool               { p.mu.Lock(); defer p.mu.Unlock(); return p.up }
func (p *fakeProc) setUp(v bool)                { p.mu.Lock(); p.up = v; p.mu.Unlock() }

// fakeTarget is three "nodes" that are all the package's broker; killing
// the master's broker makes the next node master.
type fakeTarget struct {
	url    string
	mu     sync.Mutex
	log    []string
	master int
	procs  [3][2]*fakeProc
}

func newFakeTarget(url string) *fakeTarget {
	t := &fakeTarget{url: url}
	for i := range 3 {
		for j, part := range []string{"broker", "sidecar"} {
			t.procs[i][j] = &fakeProc{name: fmt.Sprintf("%s-%d", part, i), log: &t.log, mu: &t.mu, up: true}
		}
		t.procs[i][0].onKill = func() {
			t.mu.Lock()
			if t.master == i {
				t.master = (i + 1) % 3
			}
			t.mu.Unlock()
		}
	}
	return t
}

func (t *fakeTarget) Name() string          { return "fake" }
func (t *fakeTarget) Nodes() int            { return 3 }
func (t *fakeTarget) NodeName(i int) string { return fmt.Sprintf("node-%d", i) }
func (t *fakeTarget) Addrs() []string       { return []string{t.url, t.url, t.url} }
func (t *fakeTarget) Proc(i int, p Part) Proc {
	if p == PartSidecar {
		return t.procs[i][1]
	}
	return t.procs[i][0]
}
func (t *fakeTarget) Prepare(ctx context.Context, queue string, args amqp.Table) error {
	return DeclareQueue(ctx, t.url, queue, args)
}
func (t *fakeTarget) Master(context.Context, string) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.master, nil
}
func (t *fakeTarget) WaitMaster(ctx context.Context, q string, exclude int) (int, error) {
	for {
		if m, _ := t.Master(ctx, q); m != exclude {
			return m, nil
		}
		if !sleep(ctx, 10*time.Millisecond) {
			return -1, ctx.Err()
		}
	}
}
func (t *fakeTarget) WaitReady(context.Context, string) error { return nil }

func TestRunFakeTarget(t *testing.T) {
	n, ignore := startBroker(t)
	defer goleak.VerifyNone(t, ignore)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ft := newFakeTarget(n.URL)
	rep, err := Run(ctx, Scenario{
		Name: "fake", Target: ft, Queue: "chaos-runner-fake", Seed: 3,
		Faults: []Fault{
			{Role: Master, Part: PartBoth, Action: Kill},
			{Role: Mirror, Part: PartSidecar, Action: Freeze, Hold: 200 * time.Millisecond},
			{Role: Master, Part: PartSidecar, Action: Stop},
		},
		Hold: 300 * time.Millisecond, Warmup: 500 * time.Millisecond, Between: 200 * time.Millisecond,
		Cooldown: 300 * time.Millisecond, Logf: t.Logf,
	})
	t.Logf("%s", rep)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Valid() || rep.Result.Confirmed == 0 {
		t.Fatalf("invalid or empty run")
	}
	ft.mu.Lock()
	got := strings.Join(ft.log, ", ")
	ft.mu.Unlock()
	// Fault 1 hits node-0 (master); its broker's death makes node-1 the
	// master; fault 2 hits a mirror of node-1; fault 3 node-1's sidecar.
	mirror := rep.Faults[1].Node
	want := "kill broker-0, kill sidecar-0, start broker-0, start sidecar-0, " +
		"pause sidecar-" + mirror[len(mirror)-1:] + ", unpause sidecar-" + mirror[len(mirror)-1:] + ", " +
		"stop sidecar-1, start sidecar-1, "
	// At the end the runner thaws everything (nothing is down to start).
	want += "unpause broker-0, unpause broker-1, unpause broker-2, unpause sidecar-0, unpause sidecar-1, unpause sidecar-2"
	if got != want {
		t.Errorf("the runner did\n  %s\nwant\n  %s", got, want)
	}
	if mirror == "node-1" {
		t.Errorf("the mirror fault hit the master, node-1")
	}
	f := rep.Faults[0]
	if f.Node != "node-0" || f.Master != "node-0" || f.NewMaster != "node-1" || f.Failover <= 0 || f.Failover > 300*time.Millisecond {
		t.Errorf("fault 1: %+v", f)
	}
	if f.Resumed < 0 || f.Healed-f.At < 300*time.Millisecond {
		t.Errorf("fault 1: resumed %v, held %v", f.Resumed, f.Healed-f.At)
	}
	var faults, heals int
	for _, e := range rep.Events {
		switch e.Kind {
		case KindFault:
			faults++
		case KindHeal:
			heals++
		}
	}
	if faults != 3 || heals != 3 || len(rep.Result.Faults) != 6 {
		t.Errorf("%d fault and %d heal events, result lists %d", faults, heals, len(rep.Result.Faults))
	}
}

// ---- real groups ----

// runReport runs s and reports it: the report in the log, a Markdown row,
// and on failure the whole history in a file that is kept.
func runReport(t *testing.T, ctx context.Context, s Scenario) Report {
	t.Helper()
	if s.Logf == nil {
		s.Logf = t.Logf
	}
	load := func() string { b, _ := os.ReadFile("/proc/loadavg"); return strings.TrimSpace(string(b)) }
	t.Logf("chaos: %s: load average before: %s", s.Name, load())
	rep, err := Run(ctx, s)
	t.Logf("chaos: %s: load average after: %s", s.Name, load())
	t.Logf("%s", rep)
	row := reliabilityRow(rep)
	t.Logf("row: %s", row)
	if *chaosReport != "" {
		if f, ferr := os.OpenFile(*chaosReport, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); ferr == nil {
			fmt.Fprintln(f, row)
			f.Close()
		} else {
			t.Errorf("chaos.report: %v", ferr)
		}
	}
	if err != nil {
		t.Errorf("run %s: %v", s.Name, err)
	}
	switch {
	case len(rep.Result.Lost) > 0 || len(rep.Result.Dropped) > 0 || rep.DrainErr != nil:
		t.Errorf("run %s: INVALID: lost %d, dropped %d, unexpected duplicates %d (drain: %v)",
			s.Name, len(rep.Result.Lost), len(rep.Result.Dropped), rep.Result.UnexpectedCount, rep.DrainErr)
	case !rep.Valid() && longSuite():
		t.Errorf("run %s: INVALID: unexpected duplicates %d", s.Name, rep.Result.UnexpectedCount)
	case !rep.Valid():
		// A known open bug (docs/RELIABILITY.md, "Open"): a few messages
		// delivered again without redelivered around a session move. The
		// CI subset fails on any loss; the long suite on these too.
		t.Logf("run %s: KNOWN OPEN BUG: %d unexpected duplicates (no loss)", s.Name, rep.Result.UnexpectedCount)
	}
	if t.Failed() || *chaosKeep != "" {
		keepHistory(t, rep, *chaosKeep)
	}
	return rep
}

// keepHistory writes the run's report and events to a file in dir (""
// means $TMPDIR) that outlives the test.
func keepHistory(t *testing.T, rep Report, dir string) {
	name := strings.NewReplacer(" ", "-", ",", "", "/", "-").Replace(rep.Name)
	f, err := os.CreateTemp(dir, "chaos-history-"+name+"-*.txt")
	if err != nil {
		t.Logf("keeping the history: %v", err)
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s\n\n", rep)
	for _, e := range rep.Events {
		fmt.Fprintln(f, e)
	}
	t.Logf("the run's history (%d events) is kept in %s", len(rep.Events), f.Name())
}

// ReliabilityHeader heads the table of docs/RELIABILITY.md.
const reliabilityHeader = "| run | target | faults | published | confirmed | lost | dropped | dup. expected | dup. unexpected | worst producer wait | confirms resumed (worst fault) | failover (worst) | valid |\n" +
	"|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"

// reliabilityRow is one row of that table.
func reliabilityRow(rep Report) string {
	r := rep.Result
	var resumed, failover time.Duration
	never := false
	for _, f := range rep.Faults {
		if f.Resumed < 0 {
			never = true
		}
		resumed = max(resumed, f.Resumed)
		failover = max(failover, f.Failover)
	}
	res := fmt.Sprintf("%.2fs", resumed.Seconds())
	if never {
		res = "never"
	}
	fo := "–"
	if failover > 0 {
		fo = fmt.Sprintf("%.2fs", failover.Seconds())
	}
	valid := "yes"
	if !rep.Valid() {
		valid = "**no**"
	}
	return fmt.Sprintf("| %s | %s | %d | %d | %d | %d | %d | %d | %d | %.2fs | %s | %s | %s |",
		rep.Name, rep.Target, len(rep.Faults), r.Published, r.Confirmed, len(r.Lost), len(r.Dropped),
		r.ExpectedDuplicates(), r.UnexpectedCount, r.LongestWait().Len.Seconds(), res, fo, valid)
}

// leakCheckAfterClose checks for leaked goroutines once the test's group
// is closed: registered before testenv.Start, this cleanup runs after the
// group's (a restarted broker's or sidecar's waiter is testenv's until
// then).
func leakCheckAfterClose(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// The sidecar binary of every group of this test process: built once, so
// that every run of a suite tests the same code even while the working
// tree changes (testenv would build one per group), unless
// MIRRORPROXY_TESTENV_SIDECAR_BINARY names one (e.g. built from a commit).
var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

func sidecarBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if p := os.Getenv(testenv.EnvSidecarBinary); p != "" {
			binPath = p
		} else {
			if binDir, binErr = os.MkdirTemp("", "chaos-sidecar-"); binErr != nil {
				return
			}
			binPath = filepath.Join(binDir, "mirrorproxy")
			cmd := exec.Command("go", "build", "-o", binPath, "github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy")
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				binErr = fmt.Errorf("build the sidecar: %w\n%s", err, out)
				return
			}
		}
		b, err := os.ReadFile(binPath)
		if err != nil {
			binErr = err
			return
		}
		desc, _ := exec.Command("git", "describe", "--always", "--dirty").Output()
		fmt.Fprintf(os.Stderr, "chaos: sidecar binary %s (sha256 %x), test tree %s\n",
			binPath, sha256.Sum256(b), strings.TrimSpace(string(desc)))
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// removeSidecarBinary removes the binary sidecarBinary built (TestMain).
func removeSidecarBinary() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// startMirroredGroup starts a 3-node mirrorproxy group (GroupOptions).
func startMirroredGroup(t *testing.T) *GroupTarget {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a group of brokers and sidecars (not with -short)")
	}
	opts := GroupOptions()
	opts.Sidecar = &testenv.SidecarOptions{Binary: sidecarBinary(t)}
	opts.Group.MoveSessions = *chaosMoves || os.Getenv(EnvChaosMoves) == "1"
	if opts.Group.MoveSessions {
		t.Log("chaos: sessions move with the master (raft.move_sessions)")
	}
	leakCheckAfterClose(t)
	began := time.Now()
	g := testenv.Start(t, opts)
	t.Logf("chaos: group %s formed in %.1fs", g.ID, time.Since(began).Seconds())
	return NewGroupTarget(g)
}

// TestChaosShort is the CI subset: one run of four faults on a mirrorproxy
// group, with a backlog in the queue: kill -9 of the master's broker, of
// the master's sidecar, SIGSTOP of the master's broker, kill -9 of a
// mirror's broker.
func TestChaosShort(t *testing.T) {
	target := startMirroredGroup(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	runReport(t, ctx, Scenario{
		Name: "short", Target: target, Seed: *chaosSeed, Backlog: true,
		Faults: []Fault{
			{Role: Master, Part: PartBroker, Action: Kill},
			{Role: Master, Part: PartSidecar, Action: Kill},
			{Role: Master, Part: PartBroker, Action: Freeze},
			{Role: Mirror, Part: PartBroker, Action: Kill},
		},
	})
}

// TestChaosLong is the long suite (-chaos.long or MIRRORPROXY_CHAOS=long;
// `make chaos`): every fault kind twice on a fresh group, a mixed run of
// -chaos.faults faults, and RabbitMQ's own classic mirrored and quorum
// queues under the broker faults.
func TestChaosLong(t *testing.T) {
	if !longSuite() {
		t.Skip("the long chaos suite runs with -chaos.long or " + EnvChaos + "=long (make chaos)")
	}
	t.Logf("table header:\n%s", reliabilityHeader)
	for _, f := range FaultKinds() {
		t.Run("kind/"+strings.ReplaceAll(f.Kind(), " ", "-"), func(t *testing.T) {
			target := startMirroredGroup(t)
			ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
			defer cancel()
			runReport(t, ctx, Scenario{Name: f.Kind(), Target: target, Seed: *chaosSeed, Backlog: true, Faults: []Fault{f, f}})
		})
	}
	t.Run("mixed", func(t *testing.T) {
		target := startMirroredGroup(t)
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Minute)
		defer cancel()
		faults := RandomSchedule(*chaosSeed, *chaosFaults, FaultKinds(), 2*time.Second, 6*time.Second)
		runReport(t, ctx, Scenario{Name: fmt.Sprintf("mixed, %d faults", len(faults)), Target: target, Seed: *chaosSeed,
			Backlog: true, Faults: faults})
	})
	for _, quorum := range []bool{false, true} {
		name := "rabbitmq-classic-mirrored"
		var args amqp.Table
		if quorum {
			name, args = "rabbitmq-quorum", amqp.Table{"x-queue-type": "quorum"}
		}
		t.Run(name, func(t *testing.T) {
			target := startCluster(t, quorum)
			ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
			defer cancel()
			runReport(t, ctx, Scenario{Name: name + " broker faults", Target: target, Seed: *chaosSeed,
				Backlog: true, QueueArgs: args, Faults: BrokerOnly(FaultKinds())})
		})
	}
}

// startCluster starts three brokers and clusters them (FormCluster).
func startCluster(t *testing.T, quorum bool) *ClusterTarget {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a RabbitMQ cluster (not with -short)")
	}
	leakCheckAfterClose(t)
	began := time.Now()
	g := testenv.Start(t, testenv.Options{Nodes: 3})
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	if err := FormCluster(ctx, g); err != nil {
		t.Fatal(err)
	}
	t.Logf("chaos: RabbitMQ cluster %s formed in %.1fs", g.ID, time.Since(began).Seconds())
	return &ClusterTarget{G: g, Quorum: quorum}
}

func TestEventsSince(t *testing.T) {
	h := NewHistory(nil)
	h.Fault("a", "n")
	h.Heal("a", "n")
	evs, next := h.EventsSince(0)
	if len(evs) != 2 || next != 2 {
		t.Fatalf("EventsSince(0) = %d events, next %d", len(evs), next)
	}
	h.Fault("b", "n")
	if evs, next = h.EventsSince(next); len(evs) != 1 || evs[0].Name != "b" || next != 3 {
		t.Fatalf("EventsSince(2) = %v, next %d", evs, next)
	}
	if evs, next = h.EventsSince(10); len(evs) != 0 || next != 3 {
		t.Fatalf("EventsSince(10) = %v, next %d", evs, next)
	}
}
