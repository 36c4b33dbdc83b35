package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// The runner: it runs a workload against a Target (a mirrorproxy group, or
// a RabbitMQ cluster to compare with), injects a schedule of faults one at
// a time, heals each and waits for the target to be whole again, then
// stops the workload, drains the queue and checks the history. See
// docs/CHAOS.md (The runner) and targets.go for the targets.

// Proc is one process of a node that a fault can hurt. testenv.Proc (a
// node's Broker() or Sidecar()) has these methods.
type Proc interface {
	// Kill SIGKILLs the process and waits until it is gone.
	Kill() error
	// Stop stops it gracefully (SIGTERM) and waits until it is gone.
	Stop(ctx context.Context) error
	// Start starts it again after Kill or Stop, returning once it answers.
	Start(ctx context.Context) error
	// Pause freezes it (SIGSTOP); Unpause thaws it.
	Pause() error
	Unpause() error
	// Running reports whether it is alive (a paused process is).
	Running() bool
}

// Target is the system a run hurts: N nodes, each with a broker and maybe
// a sidecar, that clients reach at Addrs, one of which serves the queue
// (the master). Its methods may be called from several goroutines.
type Target interface {
	// Name names the system in reports ("mirrorproxy", "rabbitmq-classic").
	Name() string
	// Nodes is the number of nodes; NodeName(i) names node i in reports.
	Nodes() int
	NodeName(i int) string
	// Addrs are the clients' addresses, one per node (AMQP URLs).
	Addrs() []string
	// Proc returns node i's broker or sidecar, nil when the node has no
	// such process (a RabbitMQ cluster has no sidecars).
	Proc(i int, p Part) Proc
	// Prepare declares the run's durable queue with args and returns
	// once it is mirrored on every node.
	Prepare(ctx context.Context, queue string, args amqp.Table) error
	// Master returns the node that serves queue now.
	Master(ctx context.Context, queue string) (int, error)
	// WaitMaster waits until a node other than exclude (-1: any) serves
	// queue, and returns it.
	WaitMaster(ctx context.Context, queue string, exclude int) (int, error)
	// WaitReady waits until every node is back (in the group's view, in
	// the cluster) and queue is synchronised on every node.
	WaitReady(ctx context.Context, queue string) error
}

// Part names the process or processes of a node a fault hurts.
type Part uint8

const (
	// PartBroker is the RabbitMQ broker.
	PartBroker Part = iota + 1
	// PartSidecar is the mirrorproxy sidecar.
	PartSidecar
	// PartBoth is both: the broker first, then the sidecar (healed in
	// the same order: a sidecar finds its broker up).
	PartBoth
)

func (p Part) String() string {
	switch p {
	case PartBroker:
		return "broker"
	case PartSidecar:
		return "sidecar"
	case PartBoth:
		return "both"
	}
	return fmt.Sprintf("part(%d)", uint8(p))
}

func (p Part) parts() []Part {
	if p == PartBoth {
		return []Part{PartBroker, PartSidecar}
	}
	return []Part{p}
}

// Action is what a fault does to a process, and how it is healed.
type Action uint8

const (
	// Kill is kill -9; healed by starting the process again.
	Kill Action = iota + 1
	// Freeze is SIGSTOP; healed by SIGCONT.
	Freeze
	// Stop is SIGTERM (a graceful stop: a sidecar hands over first);
	// healed by starting the process again.
	Stop
)

func (a Action) String() string {
	switch a {
	case Kill:
		return "kill"
	case Freeze:
		return "freeze"
	case Stop:
		return "stop"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Role says which node a fault hurts: the one serving the queue at the
// time, or one of the others (picked by the run's seed).
type Role uint8

const (
	// Master is the node that serves the queue when the fault begins.
	Master Role = iota + 1
	// Mirror is another node.
	Mirror
)

func (r Role) String() string {
	switch r {
	case Master:
		return "master"
	case Mirror:
		return "mirror"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// Fault is one fault of a schedule: Action on the Part of a node in Role,
// held for Hold (0: the Scenario's default) and then healed.
type Fault struct {
	Role   Role
	Part   Part
	Action Action
	Hold   time.Duration
}

// Kind is the fault without its hold, e.g. "kill master broker".
func (f Fault) Kind() string {
	return f.Action.String() + " " + f.Role.String() + " " + f.Part.String()
}

func (f Fault) String() string {
	if f.Hold == 0 {
		return f.Kind()
	}
	return fmt.Sprintf("%s for %v", f.Kind(), f.Hold)
}

// needsSidecar reports whether f hurts a sidecar.
func (f Fault) needsSidecar() bool { return f.Part != PartBroker }

// FaultKinds are the faults a long run covers, on the master and on a
// mirror: kill -9 of the broker, the sidecar, both; SIGSTOP of the broker,
// the sidecar; SIGTERM of the sidecar.
func FaultKinds() []Fault {
	var out []Fault
	for _, r := range []Role{Master, Mirror} {
		out = append(out,
			Fault{Role: r, Part: PartBroker, Action: Kill},
			Fault{Role: r, Part: PartSidecar, Action: Kill},
			Fault{Role: r, Part: PartBoth, Action: Kill},
			Fault{Role: r, Part: PartBroker, Action: Freeze},
			Fault{Role: r, Part: PartSidecar, Action: Freeze},
			Fault{Role: r, Part: PartSidecar, Action: Stop},
		)
	}
	return out
}

// BrokerOnly keeps the faults that hurt brokers only (for a target
// without sidecars).
func BrokerOnly(fs []Fault) []Fault {
	var out []Fault
	for _, f := range fs {
		if !f.needsSidecar() {
			out = append(out, f)
		}
	}
	return out
}

// RandomSchedule picks n faults from kinds with seed, each held between
// minHold and maxHold. The same arguments give the same schedule.
func RandomSchedule(seed int64, n int, kinds []Fault, minHold, maxHold time.Duration) []Fault {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x6368616f73)) // "chaos"
	out := make([]Fault, n)
	for i := range out {
		f := kinds[rng.IntN(len(kinds))]
		f.Hold = minHold
		if maxHold > minHold {
			f.Hold += time.Duration(rng.Int64N(int64(maxHold - minHold)))
		}
		f.Hold = f.Hold.Round(100 * time.Millisecond)
		out[i] = f
	}
	return out
}

// Scenario is one run: a target, a queue, a workload and the faults.
type Scenario struct {
	// Name names the run in reports.
	Name   string
	Target Target
	// Queue is the run's durable queue (default "ha.chaos"); QueueArgs
	// its declare arguments (x-queue-type for a quorum queue).
	Queue     string
	QueueArgs amqp.Table
	// Seed picks the mirror a Mirror fault hurts (and is reported, so a
	// schedule from RandomSchedule(Seed, …) can be made again).
	Seed int64
	// Faults are injected in order, one at a time.
	Faults []Fault
	// Hold is the hold of faults whose Hold is zero (default 4s).
	Hold time.Duration

	// Producers and Consumers are the numbers of clients (default 2 and
	// 2); Rate is each producer's messages per second (default 50). Every
	// other consumer consumes with x-cancel-on-ha-failover (not on a
	// quorum or stream queue, which refuse it).
	Producers, Consumers int
	Rate                 float64
	// AckDelay is each consumer's processing time (default 5ms; 25ms
	// with Backlog).
	AckDelay time.Duration
	// Backlog makes the consumers slower than the producers (AckDelay
	// 25ms: two consumers take about 80 of the 100 msg/s), so the queue
	// holds a growing backlog when the faults strike — with an empty
	// queue a failover has little to lose. At the end the consumers are
	// stopped at once (no waiting for them to go quiet) and the drain
	// reads the backlog.
	Backlog bool

	// Warmup runs the workload before the first fault (default 3s);
	// Between after each fault's recovery (default 2s); Cooldown after
	// the last (default 3s).
	Warmup, Between, Cooldown time.Duration
	// RecoverTimeout bounds healing a fault and waiting for the target to
	// be whole again (default 3 minutes).
	RecoverTimeout time.Duration
	// QuietTimeout bounds waiting for the consumers to go quiet after the
	// producers stopped (default 1 minute).
	QuietTimeout time.Duration

	// Logf gets progress lines (nil: none).
	Logf func(format string, args ...any)
}

func (s Scenario) withDefaults() Scenario {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if s.Queue == "" {
		s.Queue = "ha.chaos"
	}
	if s.Name == "" {
		s.Name = s.Queue
	}
	def(&s.Hold, 4*time.Second)
	if s.Producers == 0 {
		s.Producers = 2
	}
	if s.Consumers == 0 {
		s.Consumers = 2
	}
	if s.Rate == 0 {
		s.Rate = 50
	}
	if s.Backlog {
		def(&s.AckDelay, 25*time.Millisecond)
	}
	def(&s.AckDelay, 5*time.Millisecond)
	def(&s.Warmup, 3*time.Second)
	def(&s.Between, 2*time.Second)
	def(&s.Cooldown, 3*time.Second)
	def(&s.RecoverTimeout, 3*time.Minute)
	def(&s.QuietTimeout, time.Minute)
	if s.Logf == nil {
		s.Logf = func(string, ...any) {}
	}
	return s
}

// Report is what a run found: the checker's Result, and per fault when it
// struck, how the target coped and when confirms resumed.
type Report struct {
	Name, Target string
	Seed         int64
	// Backlog is Scenario.Backlog.
	Backlog bool
	Result  Result
	Faults  []FaultReport
	// Events is the whole history, for a failed run's record.
	Events []Event
	// Drained is how many messages the final drain read; DrainErr says
	// why it failed (then Result counts undrained messages as lost).
	DrainErr error
	// Started is the wall-clock time of the history's zero (to match the
	// sidecars' and brokers' logs); Took the run's wall time, setup
	// included.
	Started time.Time
	Took    time.Duration
}

// Valid is Result.Valid, and false when the drain failed.
func (r Report) Valid() bool { return r.DrainErr == nil && r.Result.Valid() }

// FaultReport is one injected fault.
type FaultReport struct {
	Fault Fault
	// Node is the node hurt; Master the node that served the queue when
	// the fault began.
	Node, Master string
	// At and Healed are history times (since the run's start).
	At, Healed time.Duration
	// Failover is the time from the fault to another node serving the
	// queue (Master faults), zero when none took over during the hold.
	// NewMaster names it.
	Failover  time.Duration
	NewMaster string
	// Recovered is the time from the heal (the hurt process restarted or
	// thawed: Healed) until the target was whole again (WaitReady);
	// Flowing the time after that until every producer had a confirm
	// again (the runner waits for both before the next fault).
	Recovered, Flowing time.Duration
	// Resumed is, from the history, the time from the fault until the
	// producers came out of the stall it caused: per producer the end of
	// its longest pause between two confirms that ended after the fault
	// and began before the hold ended (At+Fault.Hold), the worst
	// producer's; -1 when a producer never had a confirm after the fault.
	Resumed time.Duration
	// LongestWait is the longest single-producer wait (from a publish
	// attempt after a confirm to the next confirm, as Result counts it)
	// that ended between this fault and the next.
	LongestWait Window
	// Err is what went wrong injecting, healing or recovering.
	Err error
}

func (f FaultReport) String() string { return f.describe(true) }

// describe is the fault's line; with metrics, the figures from the
// history too (known once the run is over).
func (f FaultReport) describe(metrics bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s on %s at %.1fs (master %s)", f.Fault, f.Node, f.At.Seconds(), f.Master)
	if f.Failover > 0 {
		fmt.Fprintf(&b, ", new master %s after %.2fs", f.NewMaster, f.Failover.Seconds())
	}
	fmt.Fprintf(&b, ", healed at %.1fs, whole again after %.1fs, confirmed again %.1fs later", f.Healed.Seconds(), f.Recovered.Seconds(), f.Flowing.Seconds())
	if metrics {
		if f.Resumed < 0 {
			b.WriteString(", confirms never resumed")
		} else {
			fmt.Fprintf(&b, ", confirms resumed after %.2fs", f.Resumed.Seconds())
		}
		fmt.Fprintf(&b, ", longest producer wait %s", f.LongestWait)
	}
	if f.Err != nil {
		fmt.Fprintf(&b, ", ERROR: %v", f.Err)
	}
	return b.String()
}

// String is the checker's report followed by one line per fault.
func (r Report) String() string {
	var b strings.Builder
	backlog := ""
	if r.Backlog {
		backlog = ", with a backlog"
	}
	fmt.Fprintf(&b, "%s on %s (seed %d, %d faults%s, %.1fs; history time 0 = %s)\n", r.Name, r.Target, r.Seed, len(r.Faults),
		backlog, r.Took.Seconds(), r.Started.UTC().Format("15:04:05.000Z"))
	b.WriteString(r.Result.String())
	if r.DrainErr != nil {
		fmt.Fprintf(&b, "\nDRAIN FAILED: %v", r.DrainErr)
	}
	for i, f := range r.Faults {
		fmt.Fprintf(&b, "\nfault %d: %s", i+1, f)
	}
	return b.String()
}

// ErrNotApplicable is returned by Run for a fault the target cannot
// suffer (a sidecar fault on a target without sidecars).
var ErrNotApplicable = errors.New("chaos: fault not applicable to the target")

// Run runs s: prepares the queue, starts the workload over every address
// of the target, injects s.Faults one at a time (each held, healed, and
// followed by waiting for a master and for the target to be whole), then
// stops the producers, heals anything left hurt, waits for the consumers
// to go quiet (not with Backlog), stops them, drains the queue and checks
// the history.
//
// The Report is filled as far as the run got, even with an error: an
// error means the run could not be carried out as planned (a target that
// did not recover within RecoverTimeout, a failed drain), which is worth
// as much attention as an invalid Result.
func Run(ctx context.Context, s Scenario) (Report, error) {
	s = s.withDefaults()
	began := time.Now()
	t := s.Target
	rep := Report{Name: s.Name, Target: t.Name(), Seed: s.Seed, Backlog: s.Backlog}
	for _, f := range s.Faults {
		if f.needsSidecar() && t.Proc(0, PartSidecar) == nil {
			return rep, fmt.Errorf("%w: %s on %s", ErrNotApplicable, f, t.Name())
		}
	}
	rng := rand.New(rand.NewPCG(uint64(s.Seed), 0x6d6972726f72)) // "mirror"

	if err := t.Prepare(ctx, s.Queue, s.QueueArgs); err != nil {
		return rep, fmt.Errorf("chaos: prepare queue %s on %s: %w", s.Queue, t.Name(), err)
	}
	rep.Started = time.Now()
	h := NewHistory(NewClock())
	w := s.workload(h, t.Addrs())
	running, err := w.Start(ctx)
	if err != nil {
		return rep, err
	}
	s.Logf("chaos: %s: workload started (%d producers at %.0f msg/s, %d consumers acking after %v) on %d addresses",
		s.Name, s.Producers, s.Rate, s.Consumers, s.AckDelay, len(t.Addrs()))

	var runErr error
	if !sleep(ctx, s.Warmup) {
		runErr = ctx.Err()
	} else if _, err := s.waitFlowing(ctx, h, 0); err != nil {
		runErr = fmt.Errorf("chaos: before the first fault: %w", err)
	}
	for i, f := range s.Faults {
		if runErr != nil {
			break
		}
		if f.Hold == 0 {
			f.Hold = s.Hold
		}
		fr := s.inject(ctx, h, rng, f)
		rep.Faults = append(rep.Faults, fr)
		s.Logf("chaos: %s: fault %d/%d: %s", s.Name, i+1, len(s.Faults), fr.describe(false))
		if fr.Err != nil {
			runErr = fmt.Errorf("chaos: fault %d (%s on %s): %w", i+1, f, fr.Node, fr.Err)
			break
		}
		if !sleep(ctx, s.Between) {
			runErr = ctx.Err()
		}
	}
	if runErr == nil && !sleep(ctx, s.Cooldown) {
		runErr = ctx.Err()
	}

	// The end of the run outlives a cancelled ctx a little: what was
	// recorded is worth checking.
	end, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.RecoverTimeout+s.QuietTimeout)
	defer cancel()
	running.StopProducers()
	healErr := s.healAll(end)
	var quietErr error
	if !s.Backlog {
		quiet, cancelQuiet := context.WithTimeout(end, s.QuietTimeout)
		quietErr = h.WaitQuiet(quiet, 2*time.Second)
		cancelQuiet()
		if quietErr != nil {
			quietErr = fmt.Errorf("chaos: the consumers did not go quiet within %v: %w", s.QuietTimeout, quietErr)
		}
	}
	running.Stop()
	drained, drainErr := drainAny(end, t, s.Queue)
	rep.Events = h.Events()
	rep.Result = Check(rep.Events, drained)
	rep.DrainErr = drainErr
	faultMetrics(rep.Events, rep.Faults)
	rep.Took = time.Since(began)
	s.Logf("chaos: %s: done in %.1fs: %d events, drained %d", s.Name, rep.Took.Seconds(), len(rep.Events), len(drained))
	return rep, errors.Join(runErr, healErr, quietErr, drainErr)
}

// workload is the run's clients, spread over the addresses: producer i
// starts at address i, consumer i at address i+Producers; odd consumers
// ask for x-cancel-on-ha-failover, except on a quorum or stream queue
// (RabbitMQ refuses the argument there: 406 PRECONDITION_FAILED).
func (s Scenario) workload(h *History, addrs []string) Workload {
	w := Workload{History: h}
	cancelOK := true
	if t, ok := s.QueueArgs["x-queue-type"].(string); ok && (t == "quorum" || t == "stream") {
		cancelOK = false
	}
	for i := range s.Producers {
		w.Producers = append(w.Producers, ProducerConfig{
			ClientConfig: ClientConfig{ID: fmt.Sprintf("p%d", i), Addrs: addrs, Start: i},
			RoutingKey:   s.Queue, Rate: s.Rate,
		})
	}
	for i := range s.Consumers {
		w.Consumers = append(w.Consumers, ConsumerConfig{
			ClientConfig:     ClientConfig{ID: fmt.Sprintf("c%d", i), Addrs: addrs, Start: i + s.Producers},
			Queue:            s.Queue,
			AckDelay:         s.AckDelay,
			CancelOnFailover: cancelOK && i%2 == 1,
		})
	}
	return w
}

// inject hurts one node as f says, holds, heals and waits for the target
// to be whole again.
func (s Scenario) inject(ctx context.Context, h *History, rng *rand.Rand, f Fault) FaultReport {
	t := s.Target
	fr := FaultReport{Fault: f, Resumed: -1}
	rctx, cancel := context.WithTimeout(ctx, s.RecoverTimeout)
	defer cancel()
	master, err := t.WaitMaster(rctx, s.Queue, -1)
	if err != nil {
		fr.Err = fmt.Errorf("no master before the fault: %w", err)
		return fr
	}
	fr.Master = t.NodeName(master)
	victim := master
	if f.Role == Mirror {
		victim = (master + 1 + rng.IntN(t.Nodes()-1)) % t.Nodes()
	}
	fr.Node = t.NodeName(victim)

	procs := make([]Proc, 0, 2)
	for _, p := range f.Part.parts() {
		pr := t.Proc(victim, p)
		if pr == nil {
			fr.Err = fmt.Errorf("%w: %s has no %s", ErrNotApplicable, fr.Node, p)
			return fr
		}
		procs = append(procs, pr)
	}

	h.Fault(f.Kind(), fr.Node)
	fr.At = h.Now()
	var errs []error
	for _, p := range procs {
		switch f.Action {
		case Kill:
			errs = append(errs, p.Kill())
		case Freeze:
			errs = append(errs, p.Pause())
		case Stop:
			errs = append(errs, p.Stop(rctx))
		default:
			errs = append(errs, fmt.Errorf("chaos: unknown action %v", f.Action))
		}
	}
	if err := errors.Join(errs...); err != nil {
		fr.Err = fmt.Errorf("inject: %w", err)
		// Heal what can be healed before giving up.
		_ = s.heal(rctx, f, procs)
		h.Heal(f.Kind(), fr.Node)
		return fr
	}

	// Hold, watching (for a master fault) for another node to take over.
	hold, stopWatch := context.WithTimeout(rctx, max(0, f.Hold-(h.Now()-fr.At)))
	watched := make(chan struct{})
	if f.Role == Master {
		go func() {
			defer close(watched)
			if m, err := t.WaitMaster(hold, s.Queue, master); err == nil {
				fr.Failover, fr.NewMaster = h.Now()-fr.At, t.NodeName(m)
			}
		}()
	} else {
		close(watched)
	}
	<-hold.Done()
	<-watched
	stopWatch()
	if ctx.Err() != nil {
		fr.Err = ctx.Err()
	}

	if err := s.heal(rctx, f, procs); err != nil {
		fr.Err = errors.Join(fr.Err, fmt.Errorf("heal: %w", err))
	}
	h.Heal(f.Kind(), fr.Node)
	fr.Healed = h.Now()
	healed := time.Now()
	if fr.Err != nil {
		return fr
	}
	if _, err := t.WaitMaster(rctx, s.Queue, -1); err != nil {
		fr.Err = fmt.Errorf("no master after the heal: %w", err)
		return fr
	}
	if err := t.WaitReady(rctx, s.Queue); err != nil {
		fr.Err = fmt.Errorf("not whole again after the heal: %w", err)
		return fr
	}
	fr.Recovered = time.Since(healed)
	flowing, err := s.waitFlowing(rctx, h, h.Now())
	if err != nil {
		fr.Err = fmt.Errorf("whole again, but the producers are not confirmed: %w", err)
		return fr
	}
	fr.Flowing = flowing
	return fr
}

// waitFlowing waits until every producer has had a confirm recorded at or
// after from (history time), and returns how long that took.
func (s Scenario) waitFlowing(ctx context.Context, h *History, from time.Duration) (time.Duration, error) {
	began := time.Now()
	seen := map[string]bool{}
	next := 0
	for {
		var evs []Event
		evs, next = h.EventsSince(next)
		for _, e := range evs {
			if e.Kind == KindConfirm && e.At >= from {
				seen[e.Client] = true
			}
		}
		if len(seen) >= s.Producers {
			return time.Since(began), nil
		}
		if !sleep(ctx, 50*time.Millisecond) {
			return time.Since(began), fmt.Errorf("%d of %d producers had a confirm since %.1fs: %w",
				len(seen), s.Producers, from.Seconds(), ctx.Err())
		}
	}
}

// heal undoes f on procs (in order: the broker before the sidecar).
func (s Scenario) heal(ctx context.Context, f Fault, procs []Proc) error {
	var errs []error
	for _, p := range procs {
		switch f.Action {
		case Kill, Stop:
			if !p.Running() {
				errs = append(errs, p.Start(ctx))
			}
		case Freeze:
			errs = append(errs, p.Unpause())
		}
	}
	return errors.Join(errs...)
}

// healAll thaws every process and starts those not running: brokers first.
func (s Scenario) healAll(ctx context.Context) error {
	t := s.Target
	var errs []error
	for _, part := range []Part{PartBroker, PartSidecar} {
		for i := range t.Nodes() {
			p := t.Proc(i, part)
			if p == nil {
				continue
			}
			if p.Running() {
				_ = p.Unpause() // SIGCONT to a running process is harmless
			} else if err := p.Start(ctx); err != nil {
				errs = append(errs, fmt.Errorf("start the %s of %s: %w", part, t.NodeName(i), err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("chaos: healing at the end: %w", err)
	}
	return nil
}

// drainAny drains queue through the master's address, else any other,
// trying until ctx ends.
func drainAny(ctx context.Context, t Target, queue string) ([]Drained, error) {
	addrs := t.Addrs()
	var last error
	for ctx.Err() == nil {
		order := make([]int, 0, len(addrs))
		if m, err := t.Master(ctx, queue); err == nil {
			order = append(order, m)
		}
		for i := range addrs {
			order = append(order, i)
		}
		for _, i := range order {
			d, err := Drain(ctx, addrs[i], queue)
			if err == nil {
				return d, nil
			}
			last = fmt.Errorf("drain through %s: %w", t.NodeName(i), err)
		}
		sleep(ctx, time.Second)
	}
	return nil, fmt.Errorf("chaos: drain %s: %w (last: %v)", queue, ctx.Err(), last)
}

// faultMetrics fills each fault's Resumed and LongestWait from the
// history.
func faultMetrics(events []Event, faults []FaultReport) {
	if len(faults) == 0 {
		return
	}
	var end time.Duration
	if len(events) > 0 {
		end = events[len(events)-1].At
	}
	waits := producerWaits(events)
	for i := range faults {
		until := end + 1
		if i+1 < len(faults) {
			until = faults[i+1].At
		}
		faults[i].Resumed = resumedAfter(events, faults[i].At, faults[i].At+faults[i].Fault.Hold)
		for _, w := range waits {
			if e := w.Start + w.Len; e >= faults[i].At && e < until && w.Len > faults[i].LongestWait.Len {
				faults[i].LongestWait = w
			}
		}
	}
}

// resumedAfter is, for the worst producer, the time from at until the end
// of its longest pause between two confirms that ended after at and began
// before held (the end of the hold, when healing starts): when it came out
// of the stall the fault caused. A fault that caused none gives about one
// publish interval; stalls that begin later, such as a restarted node's
// rejoin and sync, show in the fault's LongestWait instead. -1 when a
// producer that published after at had no confirm after it.
func resumedAfter(events []Event, at, held time.Duration) time.Duration {
	type state struct {
		lastConfirm    time.Duration
		confirmed      bool // a confirm before the current event
		publishedAfter bool // a publish at or after at
		resumed        time.Duration
		longest        time.Duration
		confirmAfter   bool
	}
	ps := map[string]*state{}
	get := func(id string) *state {
		p := ps[id]
		if p == nil {
			p = &state{}
			ps[id] = p
		}
		return p
	}
	for _, e := range events {
		switch e.Kind {
		case KindPublish:
			p := get(e.Client)
			if e.At >= at {
				p.publishedAfter = true
			}
			if !p.confirmed {
				// The first publish starts the first pause.
				p.lastConfirm, p.confirmed = e.At, true
			}
		case KindConfirm:
			p := get(e.Client)
			if e.At >= at && p.lastConfirm <= held {
				p.confirmAfter = true
				if gap := e.At - p.lastConfirm; gap > p.longest {
					p.longest, p.resumed = gap, e.At-at
				}
			}
			p.lastConfirm, p.confirmed = e.At, true
		}
	}
	worst := time.Duration(0)
	for _, p := range ps {
		if p.publishedAfter && !p.confirmAfter {
			return -1
		}
		worst = max(worst, p.resumed)
	}
	return worst
}

// producerWaits lists every producer's waits as Check counts them: from
// the first publish attempt after a confirm (or the first ever) to the
// next confirm; a wait still open at the end runs to the producer's last
// event.
func producerWaits(events []Event) []Window {
	type state struct {
		pending bool
		since   time.Duration
		last    time.Duration
	}
	ps := map[string]*state{}
	var out []Window
	for _, e := range events {
		if e.Kind != KindPublish && e.Kind != KindConfirm && e.Kind != KindNack &&
			e.Kind != KindPublishFailed && e.Kind != KindConnect && e.Kind != KindDisconnect {
			continue
		}
		p := ps[e.Client]
		if p == nil {
			if e.Kind != KindPublish && e.Kind != KindConnect {
				continue
			}
			p = &state{}
			ps[e.Client] = p
		}
		p.last = e.At
		switch e.Kind {
		case KindPublish:
			if !p.pending {
				p.pending, p.since = true, e.At
			}
		case KindConfirm:
			if p.pending {
				out = append(out, Window{Start: p.since, Len: e.At - p.since})
				p.pending = false
			}
		}
	}
	for _, p := range ps {
		if p.pending {
			out = append(out, Window{Start: p.since, Len: p.last - p.since})
		}
	}
	return out
}
