package replicate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/gm"
)

// FollowerRing is what a Follower needs of the gm ring; *gm.Node is one.
type FollowerRing interface {
	// Applied tells the ring that this member applied sender's ops up to
	// seq; it must not block.
	Applied(sender gm.Member, seq uint64)
	// Propose and WaitStable carry this mirror's status reports.
	Propose(ctx context.Context, data []byte) (uint64, error)
	WaitStable(ctx context.Context, seq uint64) error
}

// opApplier is what a Follower needs of a Mirror.
type opApplier interface {
	Apply(b []byte, done func(error))
}

// FollowerConfig configures a Follower.
type FollowerConfig struct {
	// Mirror applies the ops to the local broker.
	Mirror *Mirror
	// Ring is the node's gm member.
	Ring FollowerRing
	// Self is this node's ID, named in its status reports.
	Self   string
	Logger zerolog.Logger
}

// Follower is a mirror's side of the master's stream: it takes the ops gm
// delivers (on gm's goroutine, which must not block) and applies them on
// its own goroutine, in order, to the Mirror. Mirror.Apply reports each op
// through done, in order per vhost but not across vhosts, so the Follower
// reports gm's Applied, per sender, only up to the longest prefix of that
// sender's ops whose done has been called. An op the mirror cannot apply is
// reported to the master with a Status op (the mirror leaves the queue's
// synced set) and counts as applied once that report is stable.
//
// Bound: an op delivered here is not stable until this member applied it,
// and a sender has at most its ring Window of unstable ops, so the queue
// holds at most Window ops per sender (gm.Config.Window, default 4096).
type Follower struct {
	mirror opApplier
	ring   FollowerRing
	self   string
	log    zerolog.Logger
	ctx    context.Context // cancelled by Stop: ends the reports in flight
	cancel context.CancelFunc

	mu     sync.Mutex
	cond   *sync.Cond
	queue  []delivered            // delivered, not given to the mirror yet
	open   map[gm.Member][]*entry // given to the mirror, per sender in op order; head not done yet
	closed bool
	used   bool     // an op other than a status report was delivered
	failed int      // ops the mirror reported with an error
	cat    *catalog // the topology of the master's stream, for a promotion

	reportMu sync.Mutex
	reported map[string]bool // QueueKey → failure reported (until a sync)

	reports sync.WaitGroup
	done    chan struct{}
}

type delivered struct {
	sender gm.Member
	seq    uint64
	data   []byte
}

type entry struct {
	sender gm.Member
	seq    uint64
	data   []byte
	done   bool
}

// NewFollower starts a Follower's goroutine; Stop and Wait end it.
func NewFollower(cfg FollowerConfig) *Follower {
	return newFollower(cfg.Mirror, cfg.Ring, cfg.Self, cfg.Logger)
}

func newFollower(mirror opApplier, ring FollowerRing, self string, log zerolog.Logger) *Follower {
	f := &Follower{mirror: mirror, ring: ring, self: self, log: log, cat: newCatalog(),
		open: map[gm.Member][]*entry{}, reported: map[string]bool{}, done: make(chan struct{})}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	f.cond = sync.NewCond(&f.mu)
	go f.run()
	return f
}

// Deliver queues one op from the master's stream; it copies the op's bytes
// and never blocks. A sync that includes this node forgets the failure
// reports of its queue (the sync makes the copy whole again).
func (f *Follower) Deliver(op gm.Op) {
	k, _ := OpKindOf(op.Data)
	if k == OpSyncStart {
		if st, err := ParseOp(op.Data); err == nil && slices.Contains(st.Nodes, f.self) {
			f.reportMu.Lock()
			delete(f.reported, QueueKey(st.Vhost, st.Queue))
			f.reportMu.Unlock()
		}
	}
	d := delivered{sender: op.Sender, seq: op.Seq, data: append([]byte(nil), op.Data...)}
	f.mu.Lock()
	if !f.closed {
		// A member's status report tells the master about that member;
		// it changes nothing here.
		f.used = f.used || k != OpStatus
		f.queue = append(f.queue, d)
		f.cond.Broadcast() // run, and waitIdle shares the cond
	}
	f.mu.Unlock()
}

// Stop makes the Follower give no more ops to the mirror; ops not given
// yet are dropped (they stay unstable), reports in flight are abandoned.
// Wait waits for its goroutines, which may be inside Mirror.Apply until the
// mirror is closed.
func (f *Follower) Stop() {
	f.mu.Lock()
	f.closed = true
	f.cond.Broadcast()
	f.mu.Unlock()
	f.cancel()
}

// Wait waits for the Follower's goroutines after Stop.
func (f *Follower) Wait() {
	<-f.done
	f.reports.Wait()
}

// Used reports whether an op other than a member's status report was
// delivered to the follower.
func (f *Follower) Used() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.used
}

// Failures returns how many ops the mirror could not apply.
func (f *Follower) Failures() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed
}

func (f *Follower) run() {
	defer close(f.done)
	for {
		f.mu.Lock()
		for len(f.queue) == 0 && !f.closed {
			f.cond.Wait()
		}
		if f.closed {
			f.mu.Unlock()
			return
		}
		d := f.queue[0]
		f.queue[0] = delivered{}
		f.queue = f.queue[1:]
		e := &entry{sender: d.sender, seq: d.seq, data: d.data}
		f.open[d.sender] = append(f.open[d.sender], e)
		f.catalogue(d.data)
		f.mu.Unlock()
		// Apply may block (the mirror broker's in-flight bound, topology
		// round trips); that is this goroutine's back-pressure, never gm's.
		f.mirror.Apply(d.data, func(err error) { f.finished(e, err) })
	}
}

// catalogue keeps the topology an op changes, as the master's catalog
// does, so that a promoted mirror knows the group's exchanges, queues and
// bindings. Called with f.mu held.
func (f *Follower) catalogue(data []byte) {
	switch k, _ := OpKindOf(data); k {
	case OpTopology, OpQueueGone:
	default:
		return
	}
	op, err := ParseOp(data)
	if err != nil {
		return
	}
	switch op.Kind {
	case OpTopology:
		f.cat.record(op.Vhost, op.Method)
	case OpQueueGone:
		if v := f.cat.vhosts[op.Vhost]; v != nil {
			v.forgetQueue(op.Queue)
		}
	}
}

// waitIdle blocks until every op delivered so far is applied here (given
// to the mirror and its done called), or ctx ends.
func (f *Follower) waitIdle(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		f.mu.Lock()
		f.cond.Broadcast()
		f.mu.Unlock()
	})
	defer stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(f.queue) > 0 || len(f.open) > 0 {
		if f.closed {
			return ErrMirrorClosed
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("replicate: %d ops delivered and %d senders' ops not applied yet: %w", len(f.queue), len(f.open), err)
		}
		f.cond.Wait()
	}
	return nil
}

// finished records one op's done and reports the applied prefix to gm.
func (f *Follower) finished(e *entry, err error) {
	if errors.Is(err, ErrMirrorClosed) {
		// The node is closing: the op is not applied here and never
		// counts as applied (no report either: this member leaves).
		return
	}
	if err == nil {
		f.markDone(e)
		return
	}
	// The op counts as applied so the group goes on (the master's broker
	// accepted it), but only once the master knows that this mirror now
	// differs for the op's queue: it leaves the synced sets before
	// anything after the op can be stable.
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.failed++
	f.reports.Add(1) // under mu: never after Stop
	f.mu.Unlock()
	f.log.Error().Err(err).Str("sender", e.sender.ID).Uint64("seq", e.seq).
		Msg("mirror could not apply an op; this mirror now differs from the master and needs a sync")
	go func() {
		defer f.reports.Done()
		f.report(e.data)
		f.markDone(e)
	}()
}

// markDone reports the sender's longest done prefix to gm. Prefixes are
// per sender: one sender's op waiting (a failure report travelling round
// the ring) never holds up another's, so two mirrors that fail the same op
// can each see the other's report become stable.
func (f *Follower) markDone(e *entry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e.done = true
	e.data = nil
	q := f.open[e.sender]
	n := 0
	for n < len(q) && q[n].done {
		n++
	}
	if n == 0 {
		return
	}
	last := q[n-1]
	clear(q[:n])
	if q = q[n:]; len(q) == 0 {
		delete(f.open, e.sender)
		f.cond.Broadcast() // waitIdle
	} else {
		f.open[e.sender] = q
	}
	f.ring.Applied(last.sender, last.seq) // never blocks
}

// ReportFresh tells the master, through the ring, that this member's
// mirror starts from empty (Master.Fresh): it is synced for nothing, and
// the master declares its catalog again so that the new mirror knows the
// queues. It returns when the report is stable or ctx ends.
func (f *Follower) ReportFresh(ctx context.Context) error {
	if f.ring == nil {
		return nil
	}
	st := AppendOp(nil, &Op{Kind: OpStatus, Nodes: []string{f.self}})
	seq, err := f.ring.Propose(ctx, st)
	if err == nil {
		err = f.ring.WaitStable(ctx, seq)
	}
	return err
}

// report tells the master, through the ring, that this mirror could not
// apply an op (data), so that it leaves the synced sets of the queue the op
// concerns (every queue of its vhost when the op is not about one queue).
// It returns when the report is stable — every member, the master
// included, has it — or cannot be made.
func (f *Follower) report(data []byte) {
	op, err := ParseOp(data)
	if err != nil || f.ring == nil {
		return
	}
	queue := ""
	switch op.Kind {
	case OpAck, OpDrop, OpQueueGone, OpSyncStart, OpSyncCopy, OpSyncEnd:
		queue = op.Queue
	case OpPolicy, OpStatus:
		return
	}
	if queue == "" && op.Kind == OpTopology {
		queue = TopologyQueue(op.Method)
	}
	// One report per queue (or vhost) until a sync makes it whole again.
	key := QueueKey(op.Vhost, queue)
	f.reportMu.Lock()
	again := f.reported[key] || f.reported[QueueKey(op.Vhost, "")]
	f.reported[key] = true
	f.reportMu.Unlock()
	if again {
		return
	}
	st := AppendOp(nil, &Op{Kind: OpStatus, Vhost: op.Vhost, Queue: queue, Nodes: []string{f.self}})
	ctx, cancel := context.WithTimeout(f.ctx, 30*time.Second)
	defer cancel()
	seq, err := f.ring.Propose(ctx, st)
	if err == nil {
		err = f.ring.WaitStable(ctx, seq)
	}
	if err != nil {
		f.log.Warn().Err(err).Msg("could not tell the master that this mirror failed an op")
	}
}
