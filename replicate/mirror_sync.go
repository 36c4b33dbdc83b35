package replicate

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// applyPolicy changes the mirror's policies as the master did.
func (m *Mirror) applyPolicy(op *Op) error {
	ps := m.cfg.Policies
	if ps == nil {
		return nil
	}
	switch {
	case op.Name == "":
		var list []Policy
		if err := json.Unmarshal(op.Data, &list); err != nil {
			return fmt.Errorf("replicate: policy op: %w", err)
		}
		if err := ps.Replace(list); err != nil {
			return fmt.Errorf("replicate: policy op: %w", err)
		}
	case len(op.Data) == 0:
		if err := ps.Clear(op.Vhost, op.Name); err != nil && !errors.Is(err, ErrPolicyNotFound) {
			return fmt.Errorf("replicate: policy op: %w", err)
		}
	default:
		var p Policy
		if err := json.Unmarshal(op.Data, &p); err != nil {
			return fmt.Errorf("replicate: policy op: %w", err)
		}
		if err := ps.Set(p); err != nil {
			return fmt.Errorf("replicate: policy op: %w", err)
		}
	}
	return m.dropUnplaced()
}

// dropUnplaced deletes this mirror's copies of queues the policies no
// longer place here (RabbitMQ drops such mirrors too).
func (m *Mirror) dropUnplaced() error {
	type gone struct {
		v *vhostMirror
		q string
	}
	var drop []gone
	m.mu.Lock()
	for _, v := range m.vhosts {
		for name, q := range v.queues {
			if !m.cfg.Mirrored(v.name, name, q.args) {
				drop = append(drop, gone{v, name})
			}
		}
	}
	m.mu.Unlock()
	var errs []error
	for _, d := range drop {
		if err := m.drain(d.v); err != nil {
			errs = append(errs, err)
			continue
		}
		m.log.Info().Str("vhost", d.v.name).Str("queue", d.q).Msg("mirror: the policies no longer place this queue here; deleting the copy")
		if err := m.runTopology(d.v, &amqp.QueueDelete{Queue: d.q}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// applySyncStart begins a sync run on this mirror if the op names it:
// copies left by an earlier, unfinished run are dropped (the run brings
// them again), and sync copies are taken from now until the run's end.
func (m *Mirror) applySyncStart(v *vhostMirror, op *Op, done func(error)) {
	if !slices.Contains(op.Nodes, m.cfg.Self) {
		m.completeNow(v, done, nil)
		return
	}
	m.mu.Lock()
	q := v.queues[op.Queue]
	m.mu.Unlock()
	if q == nil {
		m.completeNow(v, done, fmt.Errorf("replicate: sync of queue %q: this mirror holds no copy of it", op.Queue))
		return
	}
	if err := m.drain(v); err != nil {
		m.completeNow(v, done, err)
		return
	}
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.Timeout)
	defer cancel()
	// Every copy delivered so far has arrived after this round trip.
	if _, err := q.ch.rpc(ctx, &amqp.BasicQos{PrefetchCount: uint16(m.cfg.MaxHeld)}); err != nil {
		m.completeNow(v, done, fmt.Errorf("replicate: sync of queue %q: %w", op.Queue, err))
		return
	}
	m.mu.Lock()
	dropped := 0
	for id, h := range q.held {
		if q.old(id) {
			delete(q.held, id)
			m.dispose(q, id, h.tag, true)
			dropped++
		}
	}
	q.syncing, q.syncRun, q.copied = true, op.ID, 0
	clear(q.oldPending) // for copies of an earlier run, dropped above
	q.oldOrder = nil
	m.mu.Unlock()
	m.log.Info().Str("vhost", v.name).Str("queue", q.name).Uint64("sync", op.ID).Int("dropped", dropped).Msg("mirror: sync started")
	m.completeNow(v, done, nil)
}

// applySyncCopy publishes one message of the master's queue into this
// mirror's copy, unless the copy receives it by routing (ids from since
// on) or no run is in progress here.
func (m *Mirror) applySyncCopy(v *vhostMirror, op *Op, done func(error)) {
	m.mu.Lock()
	q := v.queues[op.Queue]
	active := q != nil && q.syncing
	m.mu.Unlock()
	if !active {
		m.completeNow(v, done, nil)
		return
	}
	if id, _, err := mirrorID(op.Header); err == nil && !q.old(id) {
		m.completeNow(v, done, nil)
		return
	}
	m.mu.Lock()
	q.copied++
	m.mu.Unlock()
	m.publish(v, 0, "", q.name, false, op.Header, op.Body, done)
}

// applySyncEnd ends a run. A finished run puts the copies that came by
// routing behind the sync copies, which are older (rotate).
func (m *Mirror) applySyncEnd(v *vhostMirror, op *Op, done func(error)) {
	m.mu.Lock()
	q := v.queues[op.Queue]
	active := q != nil && q.syncing && q.syncRun == op.ID
	if active {
		q.syncing = false
	}
	m.mu.Unlock()
	if !active {
		m.completeNow(v, done, nil)
		return
	}
	if err := m.drain(v); err != nil {
		m.completeNow(v, done, err)
		return
	}
	var err error
	if op.Cancelled {
		m.log.Info().Str("vhost", v.name).Str("queue", q.name).Uint64("sync", op.ID).Msg("mirror: sync cancelled; this copy stays unsynced")
	} else if err = m.rotate(v, q); err != nil {
		err = fmt.Errorf("replicate: sync of queue %q: %w", q.name, err)
	}
	if err == nil {
		// Older copies come no more once all of the copy has reached
		// the shadow consumer: then the dispositions kept for them go.
		// After this round trip every copy delivered so far has arrived.
		ctx, cancel := context.WithTimeout(m.ctx, m.cfg.Timeout)
		_, err = q.ch.rpc(ctx, &amqp.BasicQos{PrefetchCount: uint16(m.cfg.MaxHeld)})
		cancel()
		m.mu.Lock()
		m.dropOldPending(q)
		m.mu.Unlock()
	}
	if err == nil && !op.Cancelled {
		m.log.Info().Str("vhost", v.name).Str("queue", q.name).Uint64("sync", op.ID).Msg("mirror: sync finished")
	}
	m.completeNow(v, done, err)
}

// rotMsg is one message read by the rotation.
type rotMsg struct {
	tag          uint64
	header, body []byte
}

// rotate reorders a copy after a sync: the sync copies (older messages,
// ids below since) went in after the copies that came by routing, which
// must follow them as in the master's queue. The shadow consumer gives
// its copies back (closing its channel requeues them in order), a
// rotation consumer reads the whole queue and publishes each routed copy
// again at the tail, acking the original once the new one is confirmed,
// and leaves the sync copies in place; closing its channel requeues them
// ahead of the moved ones. Apply is blocked meanwhile, so no op changes
// the queue. Then the shadow consumer starts again.
func (m *Mirror) rotate(v *vhostMirror, q *shadowQueue) error {
	ctx := m.ctx
	tctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	_, err := q.ch.rpc(tctx, &amqp.BasicQos{PrefetchCount: uint16(m.cfg.MaxHeld)})
	cancel()
	if err != nil {
		return err
	}
	m.mu.Lock()
	need := false
	for id := range q.held {
		if !q.old(id) {
			need = true
			break
		}
	}
	// With the shadow consumer at its prefetch the rest of the copy is
	// ready and unseen: it may hold routed copies only if a publish was
	// applied since the copy started (to this queue or another).
	unseen := len(q.held) >= m.cfg.MaxHeld && q.since != 0 && m.maxID >= q.since
	need = q.copied > 0 && (need || unseen)
	if need {
		q.rotating = true
	}
	m.mu.Unlock()
	if !need {
		return nil
	}
	defer func() {
		m.mu.Lock()
		q.rotating = false
		m.mu.Unlock()
	}()
	tctx, cancel = context.WithTimeout(ctx, m.cfg.Timeout)
	err = q.ch.close(tctx)
	cancel()
	if err != nil {
		return err
	}
	m.mu.Lock()
	clear(q.held)
	q.fifo, q.fifoHead = nil, 0
	m.mu.Unlock()

	msgs := make(chan rotMsg, 1024)
	budget := newByteBudget(readBudget)
	rot, err := v.cons.openChannel(ctx, chanHandlers{
		keepBody: true,
		deliver: func(d *amqp.BasicDeliver, header, body []byte) {
			if !budget.acquire(ctx, len(header)+len(body)) {
				return
			}
			select {
			case msgs <- rotMsg{d.DeliveryTag, slices.Clone(header), slices.Clone(body)}:
			case <-ctx.Done():
			}
		},
	})
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), m.cfg.Timeout)
		_ = rot.close(cctx)
		cancel()
	}()
	if _, err := rot.rpc(ctx, &amqp.BasicQos{}); err != nil {
		return err
	}
	if _, err := rot.rpc(ctx, &amqp.BasicConsume{Queue: q.name, ConsumerTag: "mirrorproxy-rotate"}); err != nil {
		return err
	}
	moved := map[uint64]bool{}
	seenMoved := 0
	var originals []uint64
	var pubErr error
	var errMu sync.Mutex
	take := func(r rotMsg) {
		defer budget.release(len(r.header) + len(r.body)) // publish has written them
		id, _, err := mirrorID(r.header)
		switch {
		case err != nil || q.old(id):
			// a sync copy (or one without an id): stays where it is
		case moved[id]:
			seenMoved++ // the new copy at the tail
		default:
			moved[id] = true
			originals = append(originals, r.tag)
			m.publish(v, 0, "", q.name, false, r.header, r.body, func(err error) {
				if err != nil {
					errMu.Lock()
					pubErr = cmp.Or(pubErr, err)
					errMu.Unlock()
				}
			})
		}
	}
	var asked <-chan readyCount
read:
	for {
		if asked == nil && len(msgs) == 0 {
			asked = askReady(ctx, rot, q.name)
		}
		select {
		case r := <-msgs:
			take(r)
		case c := <-asked:
			asked = nil
			if c.err != nil {
				return c.err
			}
			for len(msgs) > 0 {
				take(<-msgs)
			}
			if c.ready == 0 && seenMoved == len(moved) {
				break read
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := m.drain(v); err != nil {
		return err
	}
	errMu.Lock()
	err = pubErr
	errMu.Unlock()
	if err != nil {
		return err
	}
	for _, tag := range originals {
		if err := rot.send(&amqp.BasicAck{DeliveryTag: tag}); err != nil {
			return err
		}
	}
	tctx, cancel = context.WithTimeout(ctx, m.cfg.Timeout)
	err = rot.close(tctx)
	cancel()
	if err != nil {
		return err
	}
	m.mu.Lock()
	q.rotating = false
	m.mu.Unlock()
	m.log.Info().Str("vhost", v.name).Str("queue", q.name).Int("moved", len(moved)).Msg("mirror: put the routed copies behind the sync copies")
	tctx, cancel = context.WithTimeout(ctx, m.cfg.Timeout)
	defer cancel()
	return m.openShadow(tctx, v, q)
}
