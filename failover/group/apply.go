package group

import (
	"errors"
	"sync"

	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/gm"
	"github.com/mirrorproxy/mirrorproxy/replicate"
)

// opApplier is what the applier needs of a replicate.Mirror.
type opApplier interface {
	Apply(b []byte, done func(error))
}

// appliedReporter is what the applier needs of a gm.Node.
type appliedReporter interface {
	Applied(sender gm.Member, seq uint64)
}

// applier takes the ops gm delivers (on gm's goroutine, which must not
// block) and applies them on its own goroutine, in order, to the mirror.
// Mirror.Apply reports each op through done, in order per vhost but not
// across vhosts, so the applier reports gm.Node.Applied, per sender, only
// up to the longest prefix of that sender's ops whose done has been called.
//
// Bound: an op delivered here is not stable until this member applied it,
// and a sender has at most its ring Window of unstable ops, so the queue
// holds at most Window ops per sender (gm.Config.Window, default 4096).
type applier struct {
	mirror opApplier
	gm     appliedReporter
	// report tells the master that an op failed here; the op counts as
	// applied once the returned channel closes (the report is stable).
	report func(data []byte) <-chan struct{}
	log    zerolog.Logger

	mu     sync.Mutex
	cond   *sync.Cond
	queue  []delivered            // delivered, not given to the mirror yet
	open   map[gm.Member][]*entry // given to the mirror, per sender in op order; head not done yet
	closed bool
	failed int // ops the mirror reported with an error

	done chan struct{}
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

func newApplier(mirror opApplier, rep appliedReporter, report func(data []byte) <-chan struct{}, log zerolog.Logger) *applier {
	a := &applier{mirror: mirror, gm: rep, report: report, log: log, open: map[gm.Member][]*entry{}, done: make(chan struct{})}
	a.cond = sync.NewCond(&a.mu)
	go a.run()
	return a
}

// deliver queues one op; it copies the op's bytes and never blocks.
func (a *applier) deliver(op gm.Op) {
	d := delivered{sender: op.Sender, seq: op.Seq, data: append([]byte(nil), op.Data...)}
	a.mu.Lock()
	if !a.closed {
		a.queue = append(a.queue, d)
		a.cond.Signal()
	}
	a.mu.Unlock()
}

// stop makes the applier give no more ops to the mirror; ops not given
// yet are dropped (they stay unstable). wait waits for its goroutine, which
// may be inside Mirror.Apply until the mirror is closed.
func (a *applier) stop() {
	a.mu.Lock()
	a.closed = true
	a.cond.Broadcast()
	a.mu.Unlock()
}

func (a *applier) wait() { <-a.done }

// failures returns how many ops the mirror could not apply.
func (a *applier) failures() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.failed
}

func (a *applier) run() {
	defer close(a.done)
	for {
		a.mu.Lock()
		for len(a.queue) == 0 && !a.closed {
			a.cond.Wait()
		}
		if a.closed {
			a.mu.Unlock()
			return
		}
		d := a.queue[0]
		a.queue[0] = delivered{}
		a.queue = a.queue[1:]
		e := &entry{sender: d.sender, seq: d.seq, data: d.data}
		a.open[d.sender] = append(a.open[d.sender], e)
		a.mu.Unlock()
		// Apply may block (the mirror broker's in-flight bound, topology
		// round trips); that is this goroutine's back-pressure, never gm's.
		a.mirror.Apply(d.data, func(err error) { a.finished(e, err) })
	}
}

// finished records one op's done and reports the applied prefix to gm.
func (a *applier) finished(e *entry, err error) {
	if errors.Is(err, replicate.ErrMirrorClosed) {
		// The node is closing: the op is not applied here and never
		// counts as applied (no report either: this member leaves).
		return
	}
	if err != nil && a.report != nil {
		// The op counts as applied so the group goes on (the master's
		// broker accepted it), but only once the master knows that this
		// mirror now differs for the op's queue: it leaves the synced
		// sets before anything after the op can be stable.
		a.mu.Lock()
		a.failed++
		a.mu.Unlock()
		a.log.Error().Err(err).Str("sender", e.sender.ID).Uint64("seq", e.seq).
			Msg("mirror could not apply an op; this mirror now differs from the master and needs a sync")
		ch := a.report(e.data)
		go func() {
			<-ch
			a.markDone(e)
		}()
		return
	}
	if err != nil {
		a.mu.Lock()
		a.failed++
		a.mu.Unlock()
		a.log.Error().Err(err).Str("sender", e.sender.ID).Uint64("seq", e.seq).
			Msg("mirror could not apply an op; this mirror now differs from the master")
	}
	a.markDone(e)
}

// markDone reports the sender's longest done prefix to gm. Prefixes are
// per sender: one sender's op waiting (a failure report travelling round
// the ring) never holds up another's, so two mirrors that fail the same op
// can each see the other's report become stable.
func (a *applier) markDone(e *entry) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e.done = true
	e.data = nil
	q := a.open[e.sender]
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
		delete(a.open, e.sender)
	} else {
		a.open[e.sender] = q
	}
	a.gm.Applied(last.sender, last.seq) // never blocks
}
