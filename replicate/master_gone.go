package replicate

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"time"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// DefaultGoneInterval is how often the master checks its auto-delete
// queues when MasterConfig.GoneInterval is zero.
const DefaultGoneInterval = time.Second

// goneCheckTimeout bounds one passive queue.declare (and a dial) of the
// queue-gone watcher.
const goneCheckTimeout = 10 * time.Second

// maxGoneBackoff bounds the pause of a vhost whose checks fail (a broker
// that is down, a vhost it refuses): each failure doubles the pause from
// the interval, and RabbitMQ logs every refused connection.
const maxGoneBackoff = 30 * time.Second

// The queue-gone watcher (docs/REPLICATION.md, QueueGone): RabbitMQ deletes
// an auto-delete queue when its last consumer goes, and no queue.delete
// passes the core, so the master asks its own broker. Every GoneInterval
// (and at once on CheckQueues) it sends one passive queue.declare per
// auto-delete queue of the catalog, on one connection per vhost that it
// keeps open while the vhost has such queues. A 404 is confirmed a second
// time while holding Master.pol exclusively, and the QueueGone op is
// proposed before the lock is released: Topology holds pol shared and is
// called only after the broker answered -ok, so a client's redeclare of
// the name is either seen by the second check (the queue exists: nothing
// is reported) or is proposed after the QueueGone op (the mirrors delete
// their copy, then declare the new queue).

// goneWatcher is the master's queue-gone watcher. Its fields other than
// kick, rounds and conns belong to its goroutine.
type goneWatcher struct {
	m        *Master
	kick     chan struct{}
	interval time.Duration // between rounds; < 0: only on CheckQueues
	vhosts   map[string]*goneVhost

	rounds atomic.Uint64 // finished rounds (tests)
	conns  atomic.Int32  // open broker connections (tests)
}

// goneVhost is the watcher's connection to one vhost of the master's broker.
type goneVhost struct {
	conn    *brokerConn
	ch      *brokerChan
	failing bool // the last check failed: logged once per streak
	backoff time.Duration
	retryAt time.Time // no check before (after a failure)
}

// startGoneWatcher starts the queue-gone watcher on m.bg; it stops with
// m.ctx. Without a broker URL there is none.
func (m *Master) startGoneWatcher() {
	if m.cfg.BrokerURL == "" {
		return
	}
	interval := m.cfg.GoneInterval
	if interval == 0 {
		interval = DefaultGoneInterval
	}
	w := &goneWatcher{m: m, kick: make(chan struct{}, 1), interval: interval, vhosts: map[string]*goneVhost{}}
	m.gone = w // before the goroutine: CheckQueues reads it without a lock
	m.bg.Add(1)
	go w.run()
}

// CheckQueues makes the master check at once whether its auto-delete
// queues still exist on its broker (it does not wait for the check). The
// mirrors are told of those that went away.
func (m *Master) CheckQueues() {
	if m.gone != nil {
		select {
		case m.gone.kick <- struct{}{}:
		default: // a check is already due, or the watcher has stopped
		}
	}
}

func (w *goneWatcher) run() {
	m := w.m
	defer m.bg.Done()
	defer w.closeAll()
	var timer *time.Timer
	var tick <-chan time.Time
	if w.interval > 0 {
		timer = time.NewTimer(w.interval)
		defer timer.Stop()
		tick = timer.C
	}
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-w.kick:
		case <-tick:
		}
		w.round(m.ctx)
		if timer != nil {
			timer.Reset(w.interval) // from the end of a round: rounds never pile up
		}
	}
}

// round checks every auto-delete queue of the catalog once, and closes the
// connections of vhosts that have none left.
func (w *goneWatcher) round(ctx context.Context) {
	defer w.rounds.Add(1)
	m := w.m
	queues := map[string][]string{}
	m.mu.Lock()
	for name, v := range m.cat.vhosts {
		for _, q := range v.qOrder {
			if v.queues[q].AutoDelete {
				queues[name] = append(queues[name], q)
			}
		}
	}
	m.mu.Unlock()
	for name, gv := range w.vhosts {
		if len(queues[name]) == 0 {
			w.drop(gv)
			delete(w.vhosts, name)
		}
	}
	vhosts := make([]string, 0, len(queues))
	for name := range queues {
		vhosts = append(vhosts, name)
	}
	slices.Sort(vhosts)
	now := time.Now()
	for _, vhost := range vhosts {
		gv := w.vhosts[vhost]
		if gv == nil {
			gv = &goneVhost{}
			w.vhosts[vhost] = gv
		}
		if now.Before(gv.retryAt) {
			continue
		}
		for _, q := range queues[vhost] {
			if ctx.Err() != nil {
				return
			}
			exists, err := w.exists(ctx, vhost, gv, q)
			if err != nil {
				// The broker or the connection: the vhost's other queues
				// wait for the next round.
				w.failed(vhost, q, gv, err)
				break
			}
			w.recovered(vhost, gv)
			if !exists {
				w.confirmGone(ctx, vhost, gv, q)
			}
		}
	}
}

// confirmGone checks a queue again while Topology is held off, and tells
// the mirrors when it is still gone.
func (w *goneWatcher) confirmGone(ctx context.Context, vhost string, gv *goneVhost, q string) {
	m := w.m
	// The 404 closed the channel: open the next one before holding
	// Topology off.
	if err := w.open(ctx, vhost, gv); err != nil {
		w.failed(vhost, q, gv, err)
		return
	}
	m.pol.Lock()
	defer m.pol.Unlock()
	if e, ok := m.Queue(vhost, q); !ok || !e.AutoDelete {
		return // deleted through the core, or redeclared otherwise
	}
	exists, err := w.exists(ctx, vhost, gv, q)
	if err != nil {
		w.failed(vhost, q, gv, err)
		return
	}
	if exists {
		return // declared again meanwhile
	}
	if _, err := m.QueueGone(vhost, q); err != nil {
		if !errors.Is(err, ErrStopped) {
			m.log.Warn().Err(err).Str("vhost", vhost).Str("queue", q).Msg("could not replicate the end of an auto-delete queue")
		}
		return
	}
	m.log.Info().Str("vhost", vhost).Str("queue", q).Msg("auto-delete queue is gone from the master's broker: the mirrors delete their copies")
}

// exists asks the master's broker whether a queue exists (passive
// queue.declare). A 405 (the queue is exclusive to another connection)
// counts as existing.
func (w *goneWatcher) exists(ctx context.Context, vhost string, gv *goneVhost, q string) (bool, error) {
	if err := w.open(ctx, vhost, gv); err != nil {
		return false, err
	}
	rctx, cancel := context.WithTimeout(ctx, goneCheckTimeout)
	_, err := gv.ch.rpc(rctx, &amqp.QueueDeclare{Queue: q, Passive: true})
	cancel()
	if err == nil {
		return true, nil
	}
	var be *BrokerError
	if errors.As(err, &be) && !be.Connection {
		gv.ch = nil // the broker closed the channel: a new one next time
		switch be.Code {
		case amqp.NotFound:
			return false, nil
		case amqp.ResourceLocked:
			return true, nil
		}
		return false, err
	}
	// A lost connection, or no answer in time (a late reply would be
	// taken for the next one's): start afresh.
	w.drop(gv)
	return false, err
}

// open makes sure the vhost has a connection and a channel.
func (w *goneWatcher) open(ctx context.Context, vhost string, gv *goneVhost) error {
	if gv.conn != nil && gv.conn.Err() != nil {
		w.drop(gv)
	}
	ctx, cancel := context.WithTimeout(ctx, goneCheckTimeout)
	defer cancel()
	if gv.conn == nil {
		c, err := dialBroker(ctx, w.m.cfg.BrokerURL, vhost, w.m.log)
		if err != nil {
			return err
		}
		gv.conn = c
		w.conns.Add(1)
	}
	if gv.ch == nil {
		ch, err := gv.conn.openChannel(ctx, chanHandlers{})
		if err != nil {
			w.drop(gv)
			return err
		}
		gv.ch = ch
	}
	return nil
}

// drop closes the vhost's connection, if any.
func (w *goneWatcher) drop(gv *goneVhost) {
	if gv.conn != nil {
		gv.conn.close()
		w.conns.Add(-1)
	}
	gv.conn, gv.ch = nil, nil
}

func (w *goneWatcher) closeAll() {
	for name, gv := range w.vhosts {
		w.drop(gv)
		delete(w.vhosts, name)
	}
}

func (w *goneWatcher) failed(vhost, q string, gv *goneVhost, err error) {
	if w.m.ctx.Err() != nil {
		return
	}
	ev := w.m.log.Debug() //nolint:zerologlint // sent with Msg below
	if !gv.failing {
		ev = w.m.log.Warn() //nolint:zerologlint // sent with Msg below
	}
	gv.failing = true
	base := w.interval
	if base <= 0 {
		base = DefaultGoneInterval
	}
	gv.backoff = min(max(2*gv.backoff, base), maxGoneBackoff)
	gv.retryAt = time.Now().Add(gv.backoff)
	ev.Err(err).Dur("retry_in", gv.backoff).Str("vhost", vhost).Str("queue", q).Msg("could not check whether an auto-delete queue still exists on the master's broker; retrying")
}

func (w *goneWatcher) recovered(vhost string, gv *goneVhost) {
	gv.backoff, gv.retryAt = 0, time.Time{}
	if gv.failing {
		gv.failing = false
		w.m.log.Info().Str("vhost", vhost).Msg("checking auto-delete queues on the master's broker again")
	}
}
