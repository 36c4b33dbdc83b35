package group

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mirrorproxy/mirrorproxy/failover"
	"github.com/mirrorproxy/mirrorproxy/gm"
	"github.com/mirrorproxy/mirrorproxy/proxy"
)

// What a node tells about itself: a snapshot for the status page, the
// metrics and the probes (Status, Events, Healthy, Ready). Every part is
// read from state the node keeps anyway, at the time it is asked.

// Event is one entry of the node's recent history (Events): a view it
// applied, a change of its role, a failover.
type Event struct {
	Time time.Time `json:"time"`
	// Kind is "view" (a committed view changed the members), "master" (the
	// view named another master: a failover or handover), "no-master"
	// (the view names none), "role" (this node's role changed) or
	// "fence" (this node stopped serving as master).
	Kind  string `json:"kind"`
	Epoch uint64 `json:"epoch"`
	Text  string `json:"text"`
}

// maxEvents bounds the node's event history.
const maxEvents = 64

// history is a ring buffer of the latest events.
type history struct {
	mu   sync.Mutex
	buf  [maxEvents]Event
	next int
	n    int
}

func (h *history) add(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	h.mu.Lock()
	h.buf[h.next] = e
	h.next = (h.next + 1) % maxEvents
	h.n = min(h.n+1, maxEvents)
	h.mu.Unlock()
}

// list returns the events, oldest first.
func (h *history) list() []Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]Event, 0, h.n)
	for i := range h.n {
		out = append(out, h.buf[(h.next-h.n+i+maxEvents)%maxEvents])
	}
	return out
}

// Events returns the node's recent view changes, role changes and
// failovers, oldest first (at most 64).
func (g *Group) Events() []Event { return g.events.list() }

// counters are the node's failover counters and the time the group spent
// without a master (as this node saw the views).
type counters struct {
	mu            sync.Mutex
	promotions    uint64 // this node's role became master
	masterChanges uint64 // a view named another master than the one before
	fences        uint64
	masterless    time.Duration // closed spells without a master
	since         time.Time     // a spell without a master since (zero: there is one)
	hadMaster     bool          // a view named a master once (start-up is not counted)
}

// viewApplied keeps the counters and the history for a committed view.
func (g *Group) viewApplied(old, v failover.View) {
	now := time.Now()
	c := &g.counters
	c.mu.Lock()
	switch {
	case v.Master == "" && c.hadMaster && c.since.IsZero():
		c.since = now
	case v.Master != "" && !c.since.IsZero():
		c.masterless += now.Sub(c.since)
		c.since = time.Time{}
	}
	if v.Master != "" {
		c.hadMaster = true
	}
	if old.Master != "" && v.Master != "" && v.Master != old.Master {
		c.masterChanges++
	}
	c.mu.Unlock()

	ids := func(v failover.View) []string {
		var out []string
		for _, m := range v.Members {
			out = append(out, fmt.Sprintf("%s@%d", m.ID, m.JoinEpoch))
		}
		return out
	}
	was, now2 := ids(old), ids(v)
	if !slices.Equal(was, now2) {
		var joined, left []string
		for _, id := range now2 {
			if !slices.Contains(was, id) {
				joined = append(joined, id)
			}
		}
		for _, id := range was {
			if !slices.Contains(now2, id) {
				left = append(left, id)
			}
		}
		text := "members " + strings.Join(now2, ", ")
		if len(joined) > 0 {
			text += "; joined " + strings.Join(joined, ", ")
		}
		if len(left) > 0 {
			text += "; left " + strings.Join(left, ", ")
		}
		g.events.add(Event{Time: now, Kind: "view", Epoch: v.Epoch, Text: text})
	}
	switch {
	case v.Master != "" && v.Master != old.Master && old.Master != "":
		g.events.add(Event{Time: now, Kind: "master", Epoch: v.Epoch, Text: fmt.Sprintf("master %s → %s", old.Master, v.Master)})
	case v.Master != "" && old.Master == "":
		g.events.add(Event{Time: now, Kind: "master", Epoch: v.Epoch, Text: "master " + v.Master})
	case v.Master == "" && old.Master != "":
		text := "no master (was " + old.Master + ")"
		if v.LostMaster != "" {
			text += "; waiting for " + v.LostMaster + ", the only holder of " + strings.Join(v.LostQueues, ", ")
		}
		g.events.add(Event{Time: now, Kind: "no-master", Epoch: v.Epoch, Text: text})
	}
}

// roleApplied keeps the counters and the history for a role change.
func (g *Group) roleApplied(from, to failover.RoleState, epoch uint64) {
	g.counters.mu.Lock()
	if to == failover.RoleMaster && from != failover.RoleFenced {
		g.counters.promotions++
	}
	if to == failover.RoleFenced {
		g.counters.fences++
	}
	g.counters.mu.Unlock()
	kind := "role"
	if to == failover.RoleFenced {
		kind = "fence"
	}
	g.events.add(Event{Kind: kind, Epoch: epoch, Text: fmt.Sprintf("%s: %s → %s", g.cfg.Self, from, to)})
}

// MemberStatus is one member of the view as this node sees it.
type MemberStatus struct {
	ID        string `json:"id"`
	JoinEpoch uint64 `json:"join_epoch"`
	// Role is "master" or "mirror".
	Role string `json:"role"`
	Self bool   `json:"self,omitempty"`
	// HeardAgo is how long ago this node last heard the member's sidecar
	// on the ring (seconds; -1: never; 0 for this node).
	HeardAgo float64 `json:"heard_ago_seconds"`
	// LagOps and LagSeconds: how far the member is behind this node's
	// op stream (the master's stream, on the master; 0 elsewhere).
	LagOps     uint64  `json:"lag_ops"`
	LagSeconds float64 `json:"lag_seconds"`
}

// QueueStatus is one mirrored queue as this node sees it.
type QueueStatus struct {
	Vhost  string `json:"vhost"`
	Name   string `json:"name"`
	Master string `json:"master"`
	// Mirrors are the members its policy places a copy on; Synced those
	// holding every message (the view's sets).
	Mirrors []string `json:"mirrors"`
	Synced  []string `json:"synced"`
	// Syncing, on the master: a sync runs; SyncProgress its fraction done.
	Syncing      bool    `json:"syncing"`
	SyncProgress float64 `json:"sync_progress"`
	SyncCopied   int64   `json:"sync_copied"`
	// Held, on a mirror, is the copies its broker holds for the queue.
	Held *int `json:"held,omitempty"`
}

// Status is a node's state at one moment.
type Status struct {
	Node string `json:"node"`
	// Role is the node's role: joining, mirror, promoting, master,
	// fenced, stepping-down, left.
	Role string `json:"role"`
	// Serving: this node's core serves clients (the master, unfenced).
	Serving bool `json:"serving"`
	// Broker is the local broker probe's verdict: ok, down, frozen,
	// unknown.
	Broker string `json:"broker"`
	// Epoch, Master and MasterEpoch are the latest committed view's.
	Epoch       uint64 `json:"epoch"`
	Master      string `json:"master"`
	MasterEpoch uint64 `json:"master_epoch"`
	// LostMaster is set while the group waits for the master it lost.
	LostMaster string `json:"lost_master,omitempty"`
	// MasterUnsynced are the mirrored queues the master was not synced
	// for when elected (ha-promote-on-failure: always): confirmed messages
	// only the departed master held may be lost.
	MasterUnsynced []string            `json:"master_unsynced,omitempty"`
	Members        []MemberStatus      `json:"members"`
	Queues         []QueueStatus       `json:"queues"`
	Raft           failover.RaftStatus `json:"raft"`
	// Ring is this node's gm ring.
	Ring RingStatus `json:"ring"`
	// Failover counters.
	Promotions    uint64 `json:"promotions"`
	MasterChanges uint64 `json:"master_changes"`
	Fences        uint64 `json:"fences"`
	// MasterlessSeconds is the time the views named no master, in total
	// since this node started (the spell going on included);
	// MasterlessNow that spell alone (0 while a master is named).
	MasterlessSeconds float64 `json:"masterless_seconds"`
	MasterlessNow     float64 `json:"masterless_now_seconds"`
	// Front is the node's proxy server (client sessions); zero before
	// it serves.
	Front proxy.Stats `json:"-"`
	// Stats is the ring's full snapshot (latency histogram included).
	RingStats gm.Stats `json:"-"`
}

// RingStatus is the ring's summary in Status.
type RingStatus struct {
	Proposed uint64 `json:"proposed"`
	Stable   uint64 `json:"stable"`
	InFlight int    `json:"in_flight"`
	Window   int    `json:"window"`
	Held     int    `json:"held"`
}

// statusTimeout bounds how long Status waits for the ring's goroutine.
const statusTimeout = time.Second

// Status returns the node's state. It fails when the ring's goroutine
// does not answer before ctx ends or within a second (a wedged node).
func (g *Group) Status(ctx context.Context) (Status, error) {
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	rs, err := g.node.Stats(ctx)
	if err != nil {
		return Status{}, fmt.Errorf("the gm ring does not answer: %w", err)
	}
	v := g.View()
	st := Status{
		Node: g.cfg.Self, Role: g.RoleState().String(), Serving: g.IsMaster(), Broker: g.probe.Health().String(),
		Epoch: v.Epoch, Master: v.Master, MasterEpoch: v.MasterEpoch, LostMaster: v.LostMaster, MasterUnsynced: v.MasterUnsynced,
		Members: []MemberStatus{}, Queues: []QueueStatus{},
		Raft: g.svc.Load().RaftStatus(), RingStats: rs,
		Ring: RingStatus{Proposed: rs.Proposed, Stable: rs.Stable, InFlight: rs.InFlight, Window: rs.Window, Held: rs.Held},
	}
	if srv := g.front(); srv != nil {
		st.Front = srv.Stats()
	}
	c := &g.counters
	c.mu.Lock()
	st.Promotions, st.MasterChanges, st.Fences = c.promotions, c.masterChanges, c.fences
	st.MasterlessSeconds = c.masterless.Seconds()
	if !c.since.IsZero() {
		st.MasterlessNow = time.Since(c.since).Seconds()
		st.MasterlessSeconds += st.MasterlessNow
	}
	c.mu.Unlock()

	lags := map[string]gm.Lag{}
	for _, l := range rs.Lags {
		lags[l.Member.ID] = l
	}
	for _, m := range v.Members {
		ms := MemberStatus{ID: m.ID, JoinEpoch: m.JoinEpoch, Role: "mirror", Self: m.ID == g.cfg.Self, HeardAgo: -1}
		if m.ID == v.Master {
			ms.Role = "master"
		}
		if ms.Self {
			ms.HeardAgo = 0
		} else if t := g.node.LastHeard(m.ID); !t.IsZero() {
			ms.HeardAgo = time.Since(t).Seconds()
		}
		if l, ok := lags[m.ID]; ok && st.Serving {
			ms.LagOps, ms.LagSeconds = l.Ops, l.Age.Seconds()
		}
		st.Members = append(st.Members, ms)
	}
	master := g.Master()
	mir := g.Mirror()
	for _, key := range v.MirroredQueues() {
		vhost, name, _ := strings.Cut(key, "\x00")
		q := QueueStatus{Vhost: vhost, Name: name, Master: v.Master,
			Mirrors: nonNil(slices.Clone(v.Mirrors[key])), Synced: nonNil(slices.Clone(v.Synced[key]))}
		if master != nil && st.Serving {
			if p, ok := master.SyncProgress(vhost, name); ok {
				q.Syncing, q.SyncProgress, q.SyncCopied = true, p.Fraction(), p.Copied
			}
		} else if mir != nil && !mir.Closed() && slices.Contains(q.Mirrors, g.cfg.Self) {
			n := mir.Held(vhost, name)
			q.Held = &n
		}
		st.Queues = append(st.Queues, q)
	}
	return st, nil
}

// front is the node's proxy server, nil before Serve made it.
func (g *Group) front() *proxy.Server {
	g.roleMu.Lock()
	defer g.roleMu.Unlock()
	return g.srv
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Check is a probe's verdict: OK, and the reasons when not.
type Check struct {
	OK      bool     `json:"ok"`
	Reasons []string `json:"reasons,omitempty"`
}

// Healthy tells whether the node's main loops answer within timeout: the
// ring's goroutine and the role's driver. A failure means the process is
// wedged (a liveness probe restarts it); a node that is merely not ready
// (its broker down, fenced) is still healthy.
func (g *Group) Healthy(ctx context.Context, timeout time.Duration) Check {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var reasons []string
	if _, err := g.node.Stats(ctx); err != nil {
		reasons = append(reasons, "the gm ring's goroutine does not answer: "+err.Error())
	}
	if err := g.pingDriver(ctx); err != nil {
		reasons = append(reasons, "the failover driver does not answer: "+err.Error())
	}
	return Check{OK: len(reasons) == 0, Reasons: reasons}
}

// pingDriver waits until the driver's goroutine takes an input.
func (g *Group) pingDriver(ctx context.Context) error {
	done := make(chan struct{})
	select {
	case g.inputs <- input{ping: done}:
	case <-ctx.Done():
		return ctx.Err()
	case <-g.stopped:
		return ErrClosed
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-g.stopped:
		return ErrClosed
	}
}

// ErrNotReady is wrapped by Ready's reasons.
var ErrNotReady = errors.New("group: not ready")

// Ready tells whether this sidecar can serve clients now: its broker
// answers the probe, it applied a view that names a master, and its role
// is master (serving) or mirror. A fenced, promoting, stepping-down,
// joining or departed node is not ready.
func (g *Group) Ready() Check {
	var reasons []string
	if h := g.probe.Health(); h != failover.BrokerOK {
		reasons = append(reasons, "the local broker is "+h.String())
	}
	v := g.View()
	switch {
	case v.Epoch == 0:
		reasons = append(reasons, "no view yet")
	case v.Master == "":
		reasons = append(reasons, fmt.Sprintf("view %d names no master", v.Epoch))
	}
	role := g.RoleState()
	switch role {
	case failover.RoleMaster:
		if !g.IsMaster() {
			reasons = append(reasons, "master but its core does not serve")
		}
	case failover.RoleMirror:
	default:
		reasons = append(reasons, "role is "+role.String())
	}
	g.roleMu.Lock()
	front := g.srv != nil && !g.closed
	g.roleMu.Unlock()
	if !front {
		reasons = append(reasons, "the front does not accept clients yet")
	}
	return Check{OK: len(reasons) == 0, Reasons: reasons}
}

// FrontStats is the node's proxy server's counters; false before Serve
// made the server.
func (g *Group) FrontStats() (proxy.Stats, bool) {
	if srv := g.front(); srv != nil {
		return srv.Stats(), true
	}
	return proxy.Stats{}, false
}
