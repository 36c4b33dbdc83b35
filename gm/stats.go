package gm

import (
	"context"
	"sync/atomic"
	"time"
)

// LatencyBuckets are the upper bounds, in seconds, of the propose→stable
// latency histogram a Node keeps (Stats.Latency): from a quarter of a
// millisecond to ten seconds.
var LatencyBuckets = []float64{0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Histogram is a snapshot of the latency histogram: Counts[i] ops took at
// most LatencyBuckets[i] (not cumulative; the last entry counts the ops
// above the last bound), Sum their total in seconds.
type Histogram struct {
	Counts []uint64
	Sum    float64
	Count  uint64
}

// histogram is the node's own; the node goroutine observes, readers load.
type histogram struct {
	counts   [16]atomic.Uint64 // len(LatencyBuckets)+1
	sumNanos atomic.Uint64
}

func (h *histogram) observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(LatencyBuckets) && s > LatencyBuckets[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNanos.Add(uint64(d.Nanoseconds()))
}

func (h *histogram) snapshot() Histogram {
	out := Histogram{Counts: make([]uint64, len(LatencyBuckets)+1)}
	for i := range out.Counts {
		out.Counts[i] = h.counts[i].Load()
		out.Count += out.Counts[i]
	}
	out.Sum = float64(h.sumNanos.Load()) / 1e9
	return out
}

// Lag is how far one member is behind this member's own stream.
type Lag struct {
	// Member is the member (its current incarnation).
	Member Member
	// Ops is how many of this member's ops it has not applied yet.
	Ops uint64
	// Age is how long ago the oldest of those was proposed (0 when none).
	Age time.Duration
}

// Stats is a snapshot of a Node's ring (Node.Stats).
type Stats struct {
	// Epoch is the installed view's; Member says whether this node is in it.
	Epoch  uint64
	Member bool
	// Proposed and Stable count this node's ops proposed and become
	// stable since it started (over every incarnation).
	Proposed, Stable uint64
	// Window is the bound on own unstable ops; InFlight how many are
	// proposed and not stable now (InFlight/Window is the occupancy).
	Window, InFlight int
	// Held is how many ops (every stream) this member buffers until stable.
	Held int
	// Lags are the other members' progress on this member's stream.
	Lags []Lag
	// Latency is the propose→stable histogram of own ops.
	Latency Histogram
}

// Stats returns the ring's counters and each member's lag on this node's
// stream, asked of the node's goroutine; it fails when ctx ends first (a
// wedged node, which a health check reports) or the node is closed.
func (n *Node) Stats(ctx context.Context) (Stats, error) {
	reply := make(chan Stats, 1)
	select {
	case n.statsReq <- reply:
	case <-ctx.Done():
		return Stats{}, ctx.Err()
	case <-n.ctx.Done():
		return Stats{}, ErrClosed
	}
	select {
	case st := <-reply:
		return st, nil
	case <-ctx.Done():
		return Stats{}, ctx.Err()
	case <-n.ctx.Done():
		return Stats{}, ErrClosed
	}
}

// stats builds Stats on the node goroutine.
func (n *Node) stats() Stats {
	now := time.Now()
	st := Stats{Proposed: n.proposed.Load(), Stable: n.stableTotal.Load(), Window: n.cfg.Ring.Window, Latency: n.latency.snapshot()}
	n.mu.Lock()
	st.InFlight = int(n.nextSeq - n.stable)
	st.Epoch, st.Member = n.view.Epoch, n.member
	at := func(seq uint64) time.Duration {
		if t := n.proposeAt[seq%uint64(len(n.proposeAt))]; t != 0 {
			return now.Sub(time.Unix(0, t))
		}
		return 0
	}
	if n.ring != nil && n.ring.IsMember() {
		st.Held = n.ring.Held()
		last := n.ring.streams[n.ring.cfg.Self].delivered
		for m, applied := range n.ring.appliedBy() {
			l := Lag{Member: m}
			if applied < last {
				l.Ops = last - applied
				l.Age = at(applied + 1)
			}
			st.Lags = append(st.Lags, l)
		}
	}
	n.mu.Unlock()
	return st
}

// appliedBy is how far each other member of the view has applied this
// member's own stream.
func (r *Ring) appliedBy() map[Member]uint64 {
	out := map[Member]uint64{}
	for _, m := range r.view.Members {
		if m != r.cfg.Self {
			out[m] = r.facts[m][r.cfg.Self]
		}
	}
	return out
}
