package replicate

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// MirrorIDHeader is the header that carries a message's id.
const MirrorIDHeader = amqp.MirrorIDHeader

// shadowQueue is a mirrored queue and its shadow consumer. Guarded by Mirror.mu.
type shadowQueue struct {
	name string
	ch   *brokerChan
	ttl  int64 // x-message-ttl in ms, -1 when none

	held map[uint64]heldCopy // id → the copy the shadow consumer holds

	// pending are acks (true) and drops (false) waiting, in op order, for
	// their copies: a disposition waits while its copy has not been
	// delivered or an earlier one waits, so that the broker sees rejects
	// (and dead-letters) in the master's order. Bounded by MaxPending.
	pending map[uint64]bool
	order   []uint64
	expired map[uint64]int // ids requeued for expiry, and how often
	gone    bool

	args amqp.Table // declare arguments (policy decisions)
	// since is the first id this copy receives by routing: older messages
	// reach it only by sync (docs/REPLICATION.md, "Sync"). 0 until this
	// mirror sees its first publish (old: every id).
	since uint64
	// syncRun is the sync run in progress here (syncing): while it runs,
	// copies of ids older than since may still arrive.
	syncRun uint64
	syncing bool
	copied  int             // sync copies published in this run
	keep    map[uint64]bool // the next purge keeps these (OpPurge)

	// oldPending are acks (true) and drops of older copies (ids below
	// since) not held yet, in oldOrder; bounded by MaxPending.
	oldPending map[uint64]bool
	oldOrder   []uint64

	// fifo is the held copies' ids in queue order (delivery order; a copy
	// the broker gives back after an expiry requeue goes first again), for
	// expiry at the head only: a broker expires a message when it reaches
	// the head of the queue, so a copy whose deadline has passed waits
	// while an older copy is held (overdue). Settled ids are skipped.
	fifo     []uint64
	fifoHead int
	overdue  bool
	rotating bool
}

type heldCopy struct {
	tag      uint64
	deadline time.Time // zero: no TTL
}

// applyTopology runs a topology method on the apply channel.
func (m *Mirror) applyTopology(v *vhostMirror, op *Op, done func(error)) {
	meth, err := amqp.DecodeMethod(op.Method)
	if err != nil {
		err = fmt.Errorf("replicate: topology op: %w", err)
		m.log.Error().Err(err).Msg("mirror: bad topology op")
		m.completeNow(v, done, err)
		return
	}
	// Publishes before this op are confirmed first: a failing method closes
	// the channel, and their confirms would be lost with it.
	if err := m.drain(v); err != nil {
		m.completeNow(v, done, err)
		return
	}
	err = m.runTopology(v, meth)
	if err != nil {
		m.log.Warn().Err(err).Str("vhost", v.name).Str("method", meth.Name()).Msg("mirror: topology op failed; replication continues")
	}
	m.completeNow(v, done, err)
}

func (m *Mirror) runTopology(v *vhostMirror, meth amqp.Method) error {
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.Timeout)
	defer cancel()
	var queue string // the shadow queue the method concerns
	switch t := meth.(type) {
	case *amqp.ExchangeDeclare:
		if t.Passive {
			return nil
		}
		t.NoWait = false
	case *amqp.ExchangeDelete:
		t.NoWait = false
	case *amqp.ExchangeBind:
		t.NoWait = false
	case *amqp.ExchangeUnbind:
		t.NoWait = false
	case *amqp.QueueDeclare:
		if t.Passive || t.Exclusive || !m.cfg.Mirrored(v.name, t.Queue, t.Arguments) {
			return nil
		}
		t.NoWait = false
		queue = t.Queue
	case *amqp.QueueBind:
		if !m.known(v, t.Queue) {
			return nil
		}
		t.NoWait = false
	case *amqp.QueueUnbind:
		if !m.known(v, t.Queue) {
			return nil
		}
	case *amqp.QueuePurge:
		if !m.known(v, t.Queue) {
			return nil
		}
		t.NoWait = false
		queue = t.Queue
	case *amqp.QueueDelete:
		if !m.known(v, t.Queue) {
			return nil
		}
		t.NoWait = false
		queue = t.Queue
	default:
		return fmt.Errorf("replicate: topology op carries %s, not a topology method", meth.Name())
	}
	ch, err := m.applyChannel(ctx, v)
	if err != nil {
		return fmt.Errorf("replicate: %s on the mirror broker: %w", meth.Name(), err)
	}
	fresh := false
	if d, ok := meth.(*amqp.QueueDeclare); ok {
		fresh = !m.known(v, d.Queue)
	}
	reply, err := ch.rpc(ctx, meth)
	if err == nil && fresh {
		// A copy this mirror did not start holds what an earlier run of
		// the sidecar left: stale, as the master may have acked it since.
		// It starts empty; old messages come back only by sync.
		if ok, _ := reply.(*amqp.QueueDeclareOk); ok != nil && ok.MessageCount > 0 {
			if _, err = ch.rpc(ctx, &amqp.QueuePurge{Queue: queue}); err == nil {
				m.log.Info().Str("vhost", v.name).Str("queue", queue).Uint32("discarded", ok.MessageCount).
					Msg("mirror: discarded the messages an earlier run left in its copy; a sync brings the master's back")
			}
		}
	}
	if err != nil {
		var be *BrokerError
		if errors.As(err, &be) && !be.Connection {
			// The broker closed the apply channel: open a new one.
			if rerr := m.openApplyChannel(ctx, v); rerr != nil {
				m.vhostFailed(v, rerr)
			}
		} else {
			m.vhostFailed(v, err)
		}
		return fmt.Errorf("replicate: %s on the mirror broker: %w", meth.Name(), err)
	}
	switch t := meth.(type) {
	case *amqp.ExchangeDeclare:
		v.exchanges[t.Exchange] = true
	case *amqp.ExchangeDelete:
		delete(v.exchanges, t.Exchange)
	case *amqp.QueueDeclare:
		return m.startShadow(ctx, v, queue, t.Arguments)
	case *amqp.QueuePurge:
		return m.purgeShadow(ctx, v, queue)
	case *amqp.QueueDelete:
		m.dropShadow(ctx, v, queue)
	}
	return nil
}

func (m *Mirror) known(v *vhostMirror, queue string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return v.queues[queue] != nil
}

// startShadow starts the shadow consumer of a queue just declared (once).
func (m *Mirror) startShadow(ctx context.Context, v *vhostMirror, queue string, args amqp.Table) error {
	if m.known(v, queue) {
		return nil
	}
	q := &shadowQueue{name: queue, ttl: -1, held: map[uint64]heldCopy{}, pending: map[uint64]bool{}, expired: map[uint64]int{}, args: args}
	m.mu.Lock()
	if m.maxID != 0 {
		q.since = m.maxID + 1
	} else {
		// No publish seen yet (a mirror that just joined): what was
		// published before reaches this copy only by sync.
		m.sinceUnset = append(m.sinceUnset, q)
	}
	m.mu.Unlock()
	if t, ok := args.Get("x-message-ttl"); ok {
		if n, ok := amqp.Int64(t); ok && n >= 0 {
			q.ttl = n
		}
	}
	m.mu.Lock()
	v.queues[queue] = q
	m.mu.Unlock()
	return m.openShadow(ctx, v, q)
}

// openShadow opens the shadow consumer's channel and starts consuming.
func (m *Mirror) openShadow(ctx context.Context, v *vhostMirror, q *shadowQueue) error {
	ch, err := v.cons.openChannel(ctx, chanHandlers{
		deliver: func(d *amqp.BasicDeliver, header, _ []byte) { m.delivered(v, q, d, header) },
		async: func(meth amqp.Method) {
			if _, ok := meth.(*amqp.BasicCancel); ok {
				m.log.Info().Str("vhost", v.name).Str("queue", q.name).Msg("mirror: broker cancelled a shadow consumer (queue deleted)")
			}
		},
	})
	if err != nil {
		return fmt.Errorf("replicate: shadow consumer for queue %q: %w", q.name, err)
	}
	m.mu.Lock()
	q.ch = ch
	m.mu.Unlock()
	if _, err := ch.rpc(ctx, &amqp.BasicQos{PrefetchCount: uint16(m.cfg.MaxHeld)}); err != nil {
		return fmt.Errorf("replicate: shadow consumer for queue %q: %w", q.name, err)
	}
	if _, err := ch.rpc(ctx, &amqp.BasicConsume{Queue: q.name, ConsumerTag: "mirrorproxy-shadow", Exclusive: true}); err != nil {
		return fmt.Errorf("replicate: shadow consumer for queue %q: %w", q.name, err)
	}
	return nil
}

// mirrorID reads x-mirror-id from a content header payload.
func mirrorID(header []byte) (id uint64, expiration int64, err error) {
	_, _, props, err := amqp.DecodeContentHeader(header)
	if err != nil {
		return 0, -1, err
	}
	expiration = -1
	if props.Expiration != "" {
		if n, perr := strconv.ParseInt(props.Expiration, 10, 64); perr == nil && n >= 0 {
			expiration = n
		}
	}
	id, ok, err := amqp.PeekMirrorID(header)
	if err != nil {
		return 0, expiration, err
	}
	if !ok {
		return 0, expiration, fmt.Errorf("replicate: message without %s", MirrorIDHeader)
	}
	return id, expiration, nil
}

// delivered handles a copy delivered to a shadow consumer (reader goroutine).
func (m *Mirror) delivered(v *vhostMirror, q *shadowQueue, d *amqp.BasicDeliver, header []byte) {
	id, expiration, err := mirrorID(header)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		// Not ours to judge: hold it, it is in the master's queue too.
		m.log.Warn().Err(err).Str("vhost", v.name).Str("queue", q.name).Msg("mirror: copy without a usable id is held until promotion")
		return
	}
	if q.gone || q.rotating {
		return
	}
	if _, dup := q.held[id]; dup {
		// A second copy of a message (a sync copy of one that also came
		// by routing): keep the first, which is in the master's place.
		m.dispose(q, id, d.DeliveryTag, true)
		return
	}
	if ack, ok := q.oldPending[id]; ok {
		delete(q.oldPending, id)
		m.dispose(q, id, d.DeliveryTag, ack)
		return
	}
	defer m.flush(q)
	h := heldCopy{tag: d.DeliveryTag}
	ttl := q.ttl
	if expiration >= 0 && (ttl < 0 || expiration < ttl) {
		ttl = expiration
	}
	if ttl >= 0 {
		now := time.Now()
		h.deadline = now.Add(time.Duration(ttl) * time.Millisecond)
		if n := q.expired[id]; n > 0 && d.Redelivered {
			// Requeued for expiry and not expired by the broker yet (its
			// clock starts at enqueue, ours later): try again soon.
			h.deadline = now.Add(min(10*time.Millisecond<<min(n, 10), time.Second))
		}
		m.compactExpiry()
		heap.Push(&m.expiry, expiryItem{at: h.deadline, v: v, q: q, id: id, tag: d.DeliveryTag})
		if m.expiry[0].tag == d.DeliveryTag && m.expiry[0].q == q {
			select {
			case m.wake <- struct{}{}:
			default:
			}
		}
	}
	q.held[id] = h
	if n := q.expired[id]; n > 0 && d.Redelivered && q.fifoHead > 0 {
		q.fifoHead-- // back at the head, where the broker put it
		q.fifo[q.fifoHead] = id
	} else {
		q.fifo = append(q.fifo, id)
	}
	q.compactFifo()
}

// head returns the oldest held copy's id. Called with m.mu held.
func (q *shadowQueue) head() (uint64, bool) {
	for q.fifoHead < len(q.fifo) {
		id := q.fifo[q.fifoHead]
		if _, ok := q.held[id]; ok {
			return id, true
		}
		q.fifoHead++
	}
	q.fifo, q.fifoHead = q.fifo[:0], 0
	return 0, false
}

// compactFifo bounds fifo by the held copies.
func (q *shadowQueue) compactFifo() {
	if live := len(q.fifo) - q.fifoHead; live <= 2*len(q.held)+64 && q.fifoHead <= 1024 {
		return
	}
	kept := q.fifo[:0]
	for _, id := range q.fifo[q.fifoHead:] {
		if _, ok := q.held[id]; ok {
			kept = append(kept, id)
		}
	}
	clear(q.fifo[len(kept):])
	q.fifo, q.fifoHead = kept, 0
}

// expireHead requeues, from the head of the queue, the held copies whose
// deadline has passed, so that the broker expires (and dead-letters) them
// in queue order as the master's broker did. Called with m.mu held.
func (m *Mirror) expireHead(q *shadowQueue, now time.Time) {
	for {
		id, ok := q.head()
		if !ok {
			q.overdue = false
			return
		}
		h := q.held[id]
		if h.deadline.IsZero() || h.deadline.After(now) {
			return
		}
		delete(q.held, id)
		q.fifoHead++
		if len(q.expired) < m.cfg.MaxHeld {
			q.expired[id]++
		}
		if err := q.ch.send(&amqp.BasicNack{DeliveryTag: h.tag, Requeue: true}); err != nil {
			m.log.Warn().Err(err).Str("queue", q.name).Msg("mirror: cannot requeue an expired copy")
		}
	}
}

// dispose acks (ack) or rejects without requeue a delivered copy. Called
// with m.mu held.
func (m *Mirror) dispose(q *shadowQueue, id, tag uint64, ack bool) {
	delete(q.expired, id)
	var err error
	if ack {
		err = q.ch.send(&amqp.BasicAck{DeliveryTag: tag})
	} else {
		err = q.ch.send(&amqp.BasicReject{DeliveryTag: tag, Requeue: false})
	}
	if err != nil {
		m.log.Warn().Err(err).Str("queue", q.name).Msg("mirror: cannot settle a held copy")
	}
}

// applyDisposition applies an Ack or Drop op.
func (m *Mirror) applyDisposition(v *vhostMirror, op *Op, done func(error)) {
	ack := op.Kind == OpAck
	m.mu.Lock()
	q := v.queues[op.Queue]
	if q != nil && !q.gone {
		for _, id := range op.IDs {
			_, held := q.held[id]
			if !held && q.old(id) {
				// An older copy (sync) that has not reached the shadow
				// consumer: it may be in the ready part beyond the
				// prefetch, or never come. Kept apart, so it never holds
				// up the dispositions after it; applied if it arrives.
				m.rememberOld(q, id, ack)
				continue
			}
			if !held && !m.mayArrive(id) {
				continue
			}
			if _, dup := q.pending[id]; !dup {
				q.order = append(q.order, id)
			}
			q.pending[id] = ack
			m.trimPending(v, q)
		}
		m.flush(q)
	}
	m.mu.Unlock()
	m.completeNow(v, done, nil)
}

// flush settles the waiting dispositions from the head of the queue's
// order while their copies are held. Called with m.mu held.
func (m *Mirror) flush(q *shadowQueue) {
	n := 0
	for ; n < len(q.order); n++ {
		id := q.order[n]
		ack, ok := q.pending[id]
		if !ok {
			continue // forgotten by trimPending
		}
		h, held := q.held[id]
		if !held {
			break
		}
		delete(q.pending, id)
		delete(q.held, id)
		m.dispose(q, id, h.tag, ack)
	}
	q.order = q.order[n:]
	if len(q.order) == 0 {
		q.order = nil
	}
	if q.overdue && n > 0 {
		m.expireHead(q, time.Now()) // the head may have moved to an overdue copy
	}
}

// mayArrive reports whether a copy of id can still reach this mirror: it
// was published through it, or after the first publish it applied (ids
// grow within an epoch, the epoch is the top 24 bits). Dispositions of
// older messages (before this mirror joined; sync is separate) are
// ignored rather than left waiting. Called with m.mu held.
func (m *Mirror) mayArrive(id uint64) bool {
	return m.firstID != 0 && id>>40 == m.firstID>>40 && id >= m.firstID
}

// rememberOld keeps the disposition of an older copy not held yet, at most
// MaxPending per queue (the oldest forgotten: its copy stays, a duplicate
// after promotion, never a loss). Called with m.mu held.
func (m *Mirror) rememberOld(q *shadowQueue, id uint64, ack bool) {
	if q.oldPending == nil {
		q.oldPending = map[uint64]bool{}
	}
	if _, dup := q.oldPending[id]; !dup {
		q.oldOrder = append(q.oldOrder, id)
	}
	q.oldPending[id] = ack
	for len(q.oldPending) > m.cfg.MaxPending && len(q.oldOrder) > 0 {
		delete(q.oldPending, q.oldOrder[0])
		q.oldOrder = q.oldOrder[1:]
	}
	if len(q.oldOrder) > 2*len(q.oldPending)+64 {
		kept := q.oldOrder[:0]
		for _, x := range q.oldOrder {
			if _, ok := q.oldPending[x]; ok {
				kept = append(kept, x)
			}
		}
		q.oldOrder = kept
	}
}

// old reports whether id is older than what routing brings this copy.
func (q *shadowQueue) old(id uint64) bool { return q.since == 0 || id < q.since }

// dropOldPending forgets the remembered dispositions of older copies when
// none can arrive any more: every copy of the queue has reached the
// shadow consumer (fewer held than its prefetch, and the caller made sure
// every delivery so far has arrived). Called with m.mu held.
func (m *Mirror) dropOldPending(q *shadowQueue) {
	if len(q.held) < m.cfg.MaxHeld {
		clear(q.oldPending)
		q.oldOrder = nil
	}
}

// trimPending forgets the oldest remembered dispositions past MaxPending.
func (m *Mirror) trimPending(v *vhostMirror, q *shadowQueue) {
	for len(q.pending) > m.cfg.MaxPending && len(q.order) > 0 {
		id := q.order[0]
		q.order = q.order[1:]
		if _, ok := q.pending[id]; ok {
			delete(q.pending, id)
			m.log.Warn().Str("vhost", v.name).Str("queue", q.name).Uint64("id", id).Int("max_pending", m.cfg.MaxPending).
				Msg("mirror: too many acks for copies not delivered yet; forgot the oldest (its copy stays)")
		}
	}
	// Compact order once it is mostly ids already settled.
	if len(q.order) > 2*m.cfg.MaxPending+64 {
		kept := q.order[:0]
		for _, id := range q.order {
			if _, ok := q.pending[id]; ok {
				kept = append(kept, id)
			}
		}
		q.order = kept
	}
}

// purgeShadow settles what the broker's purge could not: the copies the
// shadow consumer holds (unacked copies survive queue.purge). A basic.qos
// round trip on the shadow channel after purge-ok makes sure every copy
// delivered before the purge has arrived; no later publish is in flight,
// as Apply runs topology ops synchronously.
func (m *Mirror) purgeShadow(ctx context.Context, v *vhostMirror, queue string) error {
	m.mu.Lock()
	q := v.queues[queue]
	m.mu.Unlock()
	if q == nil {
		return nil
	}
	if _, err := q.ch.rpc(ctx, &amqp.BasicQos{PrefetchCount: uint16(m.cfg.MaxHeld)}); err != nil {
		return fmt.Errorf("replicate: purge of shadow queue %q: %w", queue, err)
	}
	m.mu.Lock()
	keep := q.keep
	q.keep = nil
	for id, h := range q.held {
		if keep[id] {
			continue // delivered and unacked on the master: still there
		}
		delete(q.held, id)
		m.dispose(q, id, h.tag, true)
	}
	for id := range q.pending {
		if !keep[id] {
			delete(q.pending, id)
		}
	}
	if len(q.pending) == 0 {
		q.order = nil
	}
	m.mu.Unlock()
	return nil
}

// dropShadow forgets a deleted queue and closes its shadow channel.
func (m *Mirror) dropShadow(ctx context.Context, v *vhostMirror, queue string) {
	m.mu.Lock()
	q := v.queues[queue]
	delete(v.queues, queue)
	if q != nil {
		q.gone = true
		clear(q.held)
		q.fifo, q.fifoHead = nil, 0
		clear(q.pending)
		q.order = nil
	}
	m.mu.Unlock()
	if q != nil {
		_ = q.ch.close(ctx)
	}
}

// Held returns how many copies the shadow consumer of a queue holds.
func (m *Mirror) Held(vhost, queue string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v := m.vhosts[vhost]; v != nil {
		if q := v.queues[queue]; q != nil {
			return len(q.held)
		}
	}
	return 0
}

// pendingCount returns the remembered dispositions of a queue (tests).
func (m *Mirror) pendingCount(vhost, queue string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v := m.vhosts[vhost]; v != nil {
		if q := v.queues[queue]; q != nil {
			return len(q.pending)
		}
	}
	return 0
}

// Release prepares promotion: it waits for the publishes in flight to be
// confirmed, makes sure every copy delivered so far has arrived and every
// remembered ack that can be applied is, then closes the shadow channels
// so that the broker requeues the held copies in their original order.
// The mirror applies no more ops afterwards (ErrMirrorClosed); Close it.
// Remembered acks whose copies never arrived are logged: those copies stay
// in the queue (duplicates, never losses).
func (m *Mirror) Release(ctx context.Context) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrMirrorClosed
	}
	vs := make([]*vhostMirror, 0, len(m.vhosts))
	for _, v := range m.vhosts {
		vs = append(vs, v)
	}
	m.mu.Unlock()
	var errs []error
	for _, v := range vs {
		if err := m.drain(v); err != nil {
			errs = append(errs, err)
			continue
		}
		m.mu.Lock()
		qs := make([]*shadowQueue, 0, len(v.queues))
		for _, q := range v.queues {
			qs = append(qs, q)
		}
		m.mu.Unlock()
		for _, q := range qs {
			// After the barrier, every copy the broker sent has arrived.
			if _, err := q.ch.rpc(ctx, &amqp.BasicQos{PrefetchCount: uint16(m.cfg.MaxHeld)}); err != nil {
				errs = append(errs, fmt.Errorf("replicate: release of queue %q: %w", q.name, err))
			}
			m.mu.Lock()
			if n := len(q.pending); n > 0 {
				m.log.Warn().Str("vhost", v.name).Str("queue", q.name).Int("acks", n).
					Msg("mirror: release with acks for copies never delivered here; those copies stay")
			}
			q.gone = true
			m.mu.Unlock()
			if err := q.ch.close(ctx); err != nil {
				errs = append(errs, fmt.Errorf("replicate: release of queue %q: %w", q.name, err))
			}
		}
	}
	m.mu.Lock()
	m.closed = true
	m.cond.Broadcast()
	m.mu.Unlock()
	return errors.Join(errs...)
}

// compactExpiry drops the entries of copies settled before their deadline
// once they could make the heap outgrow the held copies it tracks: the heap
// stays within twice the live entries (and at least minExpiryLimit).
// Called with m.mu held.
func (m *Mirror) compactExpiry() {
	if len(m.expiry) < max(m.expiryLimit, minExpiryLimit) {
		return
	}
	live := m.expiry[:0]
	for _, it := range m.expiry {
		if h, ok := it.q.held[it.id]; ok && h.tag == it.tag && !it.q.gone {
			live = append(live, it)
		}
	}
	clear(m.expiry[len(live):])
	m.expiry = live
	heap.Init(&m.expiry)
	m.expiryLimit = 2 * len(live)
}

const minExpiryLimit = 1024

// expiryItem is a held copy with a TTL.
type expiryItem struct {
	at  time.Time
	v   *vhostMirror
	q   *shadowQueue
	id  uint64
	tag uint64
}

type expiryHeap []expiryItem

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiryItem)) }
func (h *expiryHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = expiryItem{}
	*h = old[:len(old)-1]
	return it
}

// expireLoop requeues held copies whose TTL has passed, so that the broker
// itself expires them — and dead-letters them with reason "expired", as the
// master's broker did — instead of them piling up held. It is the Mirror's
// one goroutine; Close stops it.
func (m *Mirror) expireLoop() {
	defer m.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		m.mu.Lock()
		now := time.Now()
		next := time.Duration(math.MaxInt64)
		for len(m.expiry) > 0 {
			it := m.expiry[0]
			if it.at.After(now) {
				next = it.at.Sub(now)
				break
			}
			heap.Pop(&m.expiry)
			h, ok := it.q.held[it.id]
			if !ok || h.tag != it.tag || it.q.gone || it.q.rotating {
				continue // settled or redelivered since
			}
			if head, _ := it.q.head(); head != it.id {
				// An older copy is held: this one expires when it is the
				// head (expireHead, after the older ones go).
				it.q.overdue = true
				continue
			}
			m.expireHead(it.q, now)
		}
		m.mu.Unlock()
		if next > time.Hour {
			next = time.Hour
		}
		timer.Reset(next)
		select {
		case <-m.ctx.Done():
			return
		case <-m.wake:
		case <-timer.C:
		}
	}
}
