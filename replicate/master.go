package replicate

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"

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

// Master turns the master core's calls into ops on the ring: it is the
// proxy.Replicator of the master's sidecar. A ticket is the op's sequence
// number in the master's gm stream.
type Master struct {
	ring  Ring
	epoch uint64
	next  atomic.Uint64
	log   zerolog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	watchers map[int]func(proxy.Ticket)
	nextW    int
	queues   map[string]map[string]struct{} // vhost → queues declared through this master
}

var _ proxy.Replicator = (*Master)(nil)

// ErrStopped is returned by a Master after Close.
var ErrStopped = errors.New("replicate: master stopped")

// NewMaster starts a Master for view epoch on ring. Close stops it.
func NewMaster(ring Ring, epoch uint64, log zerolog.Logger) *Master {
	ctx, cancel := context.WithCancel(context.Background())
	m := &Master{ring: ring, epoch: epoch, log: log, ctx: ctx, cancel: cancel, done: make(chan struct{}), watchers: map[int]func(proxy.Ticket){}, queues: map[string]map[string]struct{}{}}
	go m.watchStable()
	return m
}

// Close stops the stability watcher and fails later calls.
func (m *Master) Close() {
	m.cancel()
	<-m.done
}

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
	return m.propose(&Op{Kind: OpPublish, Vhost: p.Vhost, ID: p.ID, Exchange: string(p.Exchange),
		RoutingKey: string(p.RoutingKey), Mandatory: p.Mandatory, Header: p.Header, Body: p.Body})
}

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

// Topology implements proxy.Replicator. It also keeps the catalog of
// queues declared through this master (Queues).
func (m *Master) Topology(vhost string, method []byte) (proxy.Ticket, error) {
	m.catalog(vhost, method)
	return m.propose(&Op{Kind: OpTopology, Vhost: vhost, Method: method})
}

// catalog records queue declares and deletes. Passive declares create
// nothing and exclusive queues are never mirrored, so neither is listed.
func (m *Master) catalog(vhost string, method []byte) {
	key, ok := amqp.MethodKey(method)
	if !ok || key != amqp.QueueDeclareID && key != amqp.QueueDeleteID {
		return
	}
	dm, err := amqp.DecodeMethod(method)
	if err != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch d := dm.(type) {
	case *amqp.QueueDeclare:
		if d.Passive || d.Exclusive || d.Queue == "" {
			return
		}
		if m.queues[vhost] == nil {
			m.queues[vhost] = map[string]struct{}{}
		}
		m.queues[vhost][d.Queue] = struct{}{}
	case *amqp.QueueDelete:
		delete(m.queues[vhost], d.Queue)
	}
}

// Queues lists, sorted, the queues of vhost declared through this master
// and not deleted since. (An auto-delete queue that went away by itself
// stays listed until queue-gone ops exist.)
func (m *Master) Queues(vhost string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.queues[vhost]))
	for q := range m.queues[vhost] {
		out = append(out, q)
	}
	slices.Sort(out)
	return out
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
