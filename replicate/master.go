package replicate

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/proxy"
	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// Ring is what the master needs of the GM ring; *gm.Node is one.
type Ring interface {
	// Propose multicasts data and returns its sequence number; it blocks
	// while the ring's window is full (back-pressure).
	Propose(ctx context.Context, data []byte) (uint64, error)
	// Stable is the highest own sequence number every member applied.
	Stable() uint64
	// WaitStable blocks until seq is stable.
	WaitStable(ctx context.Context, seq uint64) error
}

// idBits is the width of the per-epoch counter in a message id; the view
// epoch takes the rest (docs/REPLICATION.md).
const idBits = 40

// MasterConfig configures a Master.
type MasterConfig struct {
	// Ring is the master's gm member.
	Ring Ring
	// Epoch is the view epoch the master serves in (the top bits of ids).
	Epoch uint64
	// Self is the master's node ID.
	Self string
	// BrokerURL is the master's broker with the sidecar's own credentials,
	// amqp://user:pass@host:port/ (sync reads the queue there; the vhost
	// comes from the queue). Empty: sync and queue checks are off.
	BrokerURL string
	// Policies are the group's policies (shared with the node; changed
	// only through SetPolicy and ClearPolicy while this master runs).
	Policies *Policies
	// Outstanding, when set, lists the ids of a queue's messages that
	// clients hold delivered and unacked (proxy.Server.Outstanding). A sync
	// waits until those it saw at its start are settled or back in the
	// queue, because a mirror can only be given them from there.
	Outstanding func(vhost, queue string) []uint64
	// Stored is the node's set of front keys (NewStoredKeys), shared with
	// its Mirror: the master adds its own publishes' keys and answers
	// proxy.Deduper from it. Nil: no de-duplication.
	Stored *StoredKeys
	// Members is the view's membership when the master starts; SetMembers
	// follows later views.
	Members []Member
	// Logger receives the master's logs.
	Logger zerolog.Logger
	// GoneInterval is how often auto-delete queues are checked (default
	// 1s; <0: only on CheckQueues). Needs BrokerURL.
	GoneInterval time.Duration
	// HoldUnrecorded holds confirms, once a mirror left a synced set,
	// until Recorded says the view reflects it: an election reads the
	// view, and must never elect a mirror that lacks a confirmed message.
	HoldUnrecorded bool
}

// Master turns the master core's calls into ops on the ring: it is the
// proxy.Replicator of the master's sidecar. A ticket is the op's sequence
// number in the master's gm stream. It also keeps the group's topology
// catalog, the synced sets, and runs syncs (docs/REPLICATION.md).
type Master struct {
	cfg   MasterConfig
	ring  Ring
	epoch uint64
	next  atomic.Uint64
	log   zerolog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	bg     sync.WaitGroup // syncs and other background work, until Close
	gone   *goneWatcher   // set by NewMaster when there is a broker URL; never changes

	// pol orders policy and membership changes against topology ops:
	// Topology holds it shared, so a change sees a consistent catalog and
	// its ops are not interleaved with a declare decided under the old
	// policy.
	pol      sync.RWMutex
	mu       sync.Mutex
	watchers map[int]func(proxy.Ticket)
	nextW    int
	cat      *catalog
	sy       syncState
}

var _ proxy.Replicator = (*Master)(nil)

// ErrStopped is returned by a Master after Close.
var ErrStopped = errors.New("replicate: master stopped")

// NewMaster starts a Master on cfg.Ring. Close stops it.
func NewMaster(cfg MasterConfig) *Master {
	if cfg.Policies == nil {
		cfg.Policies = &Policies{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Master{cfg: cfg, ring: cfg.Ring, epoch: cfg.Epoch, log: cfg.Logger, ctx: ctx, cancel: cancel, done: make(chan struct{}),
		watchers: map[int]func(proxy.Ticket){}, cat: newCatalog()}
	m.sy.init(cfg.Members)
	go m.watchStable()
	m.startGoneWatcher()
	return m
}

// Close stops the stability watcher and the syncs, and fails later calls.
func (m *Master) Close() {
	m.cancel()
	<-m.done
	m.bg.Wait()
}

// MayHaveBeenDelivered implements proxy.Redeliverer: a message published
// under an older master (its id's epoch is older than this master's) may
// have been delivered by that master, which this one cannot know: its
// deliveries are flagged redelivered (DESIGN invariant 4). Held copies
// that the broker requeued on promotion are flagged by the broker itself;
// this covers the copies a mirror held beyond its shadow prefetch, which
// the broker had never delivered.
func (m *Master) MayHaveBeenDelivered(id uint64) bool { return id>>idBits < m.epoch }

var _ proxy.Redeliverer = (*Master)(nil)

// NextID returns a fresh x-mirror-id: epoch in the high bits, a counter below.
func (m *Master) NextID() uint64 {
	return m.epoch<<idBits | m.next.Add(1)&(1<<idBits-1)
}

func (m *Master) propose(op *Op) (proxy.Ticket, error) {
	// gm keeps the bytes until the op is stable: a fresh buffer per op.
	data := AppendOp(make([]byte, 0, 64+len(op.Header)+len(op.Body)), op)
	seq, err := m.ring.Propose(m.ctx, data)
	if err != nil {
		if m.ctx.Err() != nil {
			return 0, ErrStopped
		}
		return 0, err
	}
	return proxy.Ticket(seq), nil
}

// Publish implements proxy.Replicator.
func (m *Master) Publish(p proxy.Publish) (proxy.Ticket, error) {
	m.cfg.Stored.Add(p.Key)
	return m.propose(&Op{Kind: OpPublish, Vhost: p.Vhost, ID: p.ID, Key: p.Key, Exchange: string(p.Exchange),
		RoutingKey: string(p.RoutingKey), Mandatory: p.Mandatory, Header: p.Header, Body: p.Body})
}

// Stored implements proxy.Deduper: whether this node stored the publish
// with front key key already, as master or applying an older master's
// stream.
func (m *Master) Stored(key uint64) bool { return m.cfg.Stored.Has(key) }

// Settle implements proxy.Replicator.
func (m *Master) Settle(vhost, queue string, ids []uint64, drop bool) (proxy.Ticket, error) {
	kind := OpAck
	if drop {
		kind = OpDrop
	}
	// An op carries at most MaxOpIDs ids: a larger multiple-ack goes as
	// several ops, in order; the last one's ticket covers them all.
	var t proxy.Ticket
	for len(ids) > 0 {
		n := min(len(ids), MaxOpIDs)
		var err error
		if t, err = m.propose(&Op{Kind: kind, Vhost: vhost, Queue: queue, IDs: ids[:n]}); err != nil {
			return 0, err
		}
		ids = ids[n:]
	}
	return t, nil
}

// Topology implements proxy.Replicator. It also keeps the catalog of what
// was declared through this master, and the synced sets of new queues.
func (m *Master) Topology(vhost string, method []byte) (proxy.Ticket, error) {
	// Recorded before the op is proposed: a member that joins in between
	// gets it from the catalog's replay (SetMembers), or from the op, or
	// both (declares and binds are idempotent).
	m.pol.RLock()
	defer m.pol.RUnlock()
	m.mu.Lock()
	e, gone := m.cat.record(vhost, method)
	if e != nil {
		m.queueDeclaredLocked(e)
	} else if gone != "" {
		m.sy.forget(vhost, gone)
	}
	m.mu.Unlock()
	op := &Op{Kind: OpTopology, Vhost: vhost, Method: method}
	if key, _ := amqp.MethodKey(method); key == amqp.QueuePurgeID && m.cfg.Outstanding != nil {
		// The purge left on the master what clients hold delivered and
		// unacked; the mirrors keep their copies of those.
		q := TopologyQueue(method)
		ids := m.cfg.Outstanding(vhost, q)
		if len(ids) > MaxOpIDs {
			m.log.Warn().Str("vhost", vhost).Str("queue", q).Int("unacked", len(ids)).
				Msg("purge: more unacked deliveries than one op carries; the mirrors keep the first ones only")
			ids = ids[:MaxOpIDs]
		}
		op = &Op{Kind: OpPurge, Vhost: vhost, Queue: q, IDs: ids}
	}
	t, err := m.propose(op)
	if e != nil || gone != "" {
		m.changed() // a new queue's synced set, or one gone
	}
	return t, err
}

// Queues lists, sorted, the queues of vhost declared through this master
// and not deleted since.
func (m *Master) Queues(vhost string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	if v := m.cat.vhosts[vhost]; v != nil {
		out = slices.Clone(v.qOrder)
	}
	slices.Sort(out)
	return out
}

// Queue returns the catalog entry of a queue (a copy), or false.
func (m *Master) Queue(vhost, name string) (QueueEntry, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.cat.queue(vhost, name); e != nil {
		return *e, true
	}
	return QueueEntry{}, false
}

// QueueGone tells the mirrors that a queue disappeared without a
// queue.delete through this master (an auto-delete queue whose last
// consumer left) and forgets it.
func (m *Master) QueueGone(vhost, name string) (proxy.Ticket, error) {
	m.mu.Lock()
	if v := m.cat.vhosts[vhost]; v != nil {
		v.forgetQueue(name)
	}
	m.sy.forget(vhost, name)
	m.mu.Unlock()
	t, err := m.propose(&Op{Kind: OpQueueGone, Vhost: vhost, Queue: name})
	m.changed()
	return t, err
}

// Watch implements proxy.Replicator.
func (m *Master) Watch(fn func(proxy.Ticket)) func() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextW++
	k := m.nextW
	m.watchers[k] = fn
	return func() {
		m.mu.Lock()
		delete(m.watchers, k)
		m.mu.Unlock()
	}
}

// watchStable tells the watchers each time the ring's stable point moves.
func (m *Master) watchStable() {
	defer close(m.done)
	var last uint64
	for {
		if err := m.ring.WaitStable(m.ctx, last+1); err != nil {
			if m.ctx.Err() == nil {
				m.log.Warn().Err(err).Msg("stopped watching the ring's stable point")
			}
			return
		}
		last = m.ring.Stable()
		if !m.waitRecorded() {
			return
		}
		m.mu.Lock()
		ws := make([]func(proxy.Ticket), 0, len(m.watchers))
		for _, w := range m.watchers {
			ws = append(ws, w)
		}
		m.mu.Unlock()
		for _, w := range ws {
			w(proxy.Ticket(last))
		}
	}
}
