package replicate

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
	"github.com/rs/zerolog"
)

// MirrorConfig configures a Mirror.
type MirrorConfig struct {
	// BrokerURL is the mirror's own broker, amqp://user:pass@host:port/,
	// with the sidecar's credentials; the vhost comes from each op.
	BrokerURL string
	// Mirrored decides whether a declared queue is mirrored here (the
	// policy decision). Exclusive queues never are, whatever it says.
	// Nil mirrors every non-exclusive queue.
	Mirrored func(vhost, queue string, args amqp.Table) bool
	// Self is this node's ID: sync ops name the mirrors they are for.
	Self string
	// Policies, when set, is changed by policy ops (the master's set,
	// replicated), and the mirror drops its copies of queues the new
	// policies no longer place here.
	Policies *Policies
	// Stored is the node's set of front keys (NewStoredKeys), shared with
	// the Master this node may become: the mirror adds the keys of the
	// publishes it applies. Nil: none are remembered.
	Stored *StoredKeys
	// Logger receives the mirror's logs.
	Logger zerolog.Logger
	// MaxHeld bounds the copies a shadow consumer holds per queue; it is
	// the consumer's prefetch count, so the broker keeps the rest ready
	// (default and maximum 65535).
	MaxHeld int
	// MaxPending bounds the acks and drops remembered per queue for ids
	// not delivered to the shadow consumer yet (default 65536). Past it
	// the oldest is forgotten and logged: its copy stays, a duplicate
	// after promotion rather than a loss.
	MaxPending int
	// MaxInFlight bounds the publishes per vhost that wait for the mirror
	// broker's confirm; Apply blocks beyond it (default 4096).
	MaxInFlight int
	// Timeout bounds each request to the mirror broker (connect, topology,
	// release; default 30s).
	Timeout time.Duration
}

// Mirror applies ops, in the order given, to one broker: the mirror's.
// Publishes and topology go through one confirm-mode channel per vhost;
// each mirrored queue has a shadow consumer on its own channel that holds
// every copy unacked until an Ack or Drop op, or until promotion (Release).
//
// Apply is called from one goroutine. Held, Release and Close may be called
// from any goroutine.
//
// Lock order: Mirror.mu, then a brokerConn's wmu (writes of acks under mu).
type Mirror struct {
	cfg MirrorConfig
	log zerolog.Logger

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	mu      sync.Mutex
	cond    *sync.Cond // signalled when confirms arrive or a vhost fails
	vhosts  map[string]*vhostMirror
	closed  bool   // no more ops: Release or Close
	shut    bool   // Close has run
	firstID uint64 // the first id published through this mirror (in the latest epoch)
	maxID   uint64 // the highest id published through this mirror
	// sinceUnset are queues started before this mirror saw any publish:
	// their since is the next publish's id.
	sinceUnset []*shadowQueue
	expiry     expiryHeap
	// expiryLimit is the heap size that triggers compactExpiry.
	expiryLimit int
	wake        chan struct{} // cap 1: the earliest expiry changed
	calling     sync.Mutex    // held while done callbacks run, to keep their order

	wg sync.WaitGroup // the expiry goroutine
}

// Closed reports whether the mirror was closed or released.
func (m *Mirror) Closed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// ErrMirrorClosed is returned for ops applied after Close or Release.
var ErrMirrorClosed = errors.New("replicate: mirror closed")

// NewMirror returns a Mirror for the broker at cfg.BrokerURL. It does not
// connect: the connections of a vhost are made on the first op naming it
// (bounded by cfg.Timeout), and a failure is reported through that op's
// done. ctx is only checked here; Close stops the Mirror.
func NewMirror(ctx context.Context, cfg MirrorConfig) (*Mirror, error) {
	if cfg.BrokerURL == "" {
		return nil, errors.New("replicate: MirrorConfig.BrokerURL is empty")
	}
	if cfg.MaxHeld <= 0 || cfg.MaxHeld > 65535 {
		cfg.MaxHeld = 65535
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 65536
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 4096
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Mirrored == nil {
		cfg.Mirrored = func(string, string, amqp.Table) bool { return true }
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m := &Mirror{cfg: cfg, log: cfg.Logger, vhosts: map[string]*vhostMirror{}, wake: make(chan struct{}, 1)}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.cond = sync.NewCond(&m.mu)
	m.wg.Add(1)
	go m.expireLoop()
	return m, nil
}

// vhostMirror is the mirror's state for one vhost.
type vhostMirror struct {
	name string
	pub  *brokerConn // publishes and topology
	ch   *brokerChan // the apply channel, confirm mode
	cons *brokerConn // shadow consumers
	err  error       // set when the vhost's connections failed

	seq     uint64       // publish sequence number of the last publish
	pending []*pendingOp // ops not reported yet, in op order
	unconf  int          // publishes in pending not confirmed yet

	queues map[string]*shadowQueue

	// exchanges caches whether an exchange exists on the mirror broker
	// (probed with a passive declare, kept in step by topology ops): a
	// publish to a missing exchange is refused by the master's broker too,
	// and on the apply channel it would close the channel. Applier
	// goroutine only; at most maxExchangeCache entries.
	exchanges map[string]bool
	probe     *brokerChan // the channel passive declares use
}

const maxExchangeCache = 4096

// pendingOp is an op whose done callback has not been called yet.
type pendingOp struct {
	seq      uint64 // publish sequence number; 0 for other ops
	done     func(error)
	complete bool
	err      error
}

// Apply applies one encoded op. done is called exactly once, after the op
// is durably applied (a Publish: the broker's confirm; topology: its -ok;
// Ack and Drop: the ack or reject written, or remembered for a copy not
// delivered yet), in op order per vhost; possibly later, from another
// goroutine. done must not call Apply.
//
// Apply blocks while MaxInFlight publishes of the vhost wait for confirms,
// and for topology ops until the broker answered (they are rare, and it
// keeps the shadow consumers in step with the op stream).
//
// A topology op the broker refuses (for example 406 on a redeclare with
// other arguments) is logged and reported through done(err); replication
// continues with the next op, as the master's broker accepted it and the
// mirror can only differ for that one entity. A lost broker connection
// fails that op and all later ops of the vhost.
func (m *Mirror) Apply(b []byte, done func(error)) {
	op, err := ParseOp(b)
	if err != nil {
		m.log.Error().Err(err).Msg("mirror: cannot parse op")
		done(err)
		return
	}
	if op.Kind == OpPublish {
		// Remembered whatever becomes of it here: a message the master
		// published is in the group, and if this node is promoted, a
		// moved session that sends it again must not store it twice.
		m.cfg.Stored.Add(op.Key)
	}
	switch op.Kind {
	case OpPolicy:
		done(m.applyPolicy(&op))
		return
	case OpStatus:
		done(nil) // for the master
		return
	}
	v, err := m.vhost(op.Vhost)
	if err != nil {
		done(err)
		return
	}
	switch op.Kind {
	case OpPublish:
		m.applyPublish(v, &op, done)
	case OpAck, OpDrop:
		m.applyDisposition(v, &op, done)
	case OpTopology:
		m.applyTopology(v, &op, done)
	case OpQueueGone:
		meth := amqp.AppendMethod(nil, &amqp.QueueDelete{Queue: op.Queue})
		m.applyTopology(v, &Op{Kind: OpTopology, Vhost: op.Vhost, Method: meth}, done)
	case OpPurge:
		m.mu.Lock()
		if q := v.queues[op.Queue]; q != nil {
			q.keep = make(map[uint64]bool, len(op.IDs))
			for _, id := range op.IDs {
				q.keep[id] = true
			}
		}
		m.mu.Unlock()
		meth := amqp.AppendMethod(nil, &amqp.QueuePurge{Queue: op.Queue})
		m.applyTopology(v, &Op{Kind: OpTopology, Vhost: op.Vhost, Method: meth}, done)
	case OpSyncStart:
		m.applySyncStart(v, &op, done)
	case OpSyncCopy:
		m.applySyncCopy(v, &op, done)
	case OpSyncEnd:
		m.applySyncEnd(v, &op, done)
	default:
		m.completeNow(v, done, fmt.Errorf("replicate: mirror cannot apply a %s op", op.Kind))
	}
}

// vhost returns the vhost's state, connecting on first use.
func (m *Mirror) vhost(name string) (*vhostMirror, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrMirrorClosed
	}
	if v := m.vhosts[name]; v != nil {
		err := v.err
		m.mu.Unlock()
		if err != nil {
			return nil, err
		}
		return v, nil
	}
	m.mu.Unlock()
	v, err := m.connect(name)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		v.pub.close()
		v.cons.close()
		return nil, ErrMirrorClosed
	}
	m.vhosts[name] = v
	m.mu.Unlock()
	return v, nil
}

func (m *Mirror) connect(name string) (*vhostMirror, error) {
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.Timeout)
	defer cancel()
	log := m.log.With().Str("vhost", name).Logger()
	v := &vhostMirror{name: name, queues: map[string]*shadowQueue{}, exchanges: map[string]bool{}}
	pub, err := dialBroker(ctx, m.cfg.BrokerURL, name, log)
	if err != nil {
		return nil, err
	}
	cons, err := dialBroker(ctx, m.cfg.BrokerURL, name, log)
	if err != nil {
		pub.close()
		return nil, err
	}
	v.pub, v.cons = pub, cons
	if err := m.openApplyChannel(ctx, v); err != nil {
		pub.close()
		cons.close()
		return nil, err
	}
	return v, nil
}

// applyChannel returns the vhost's apply channel, opening a new one when
// the broker closed it (it refused a publish or a method): what was in
// flight on the old one has failed and been reported; later ops go on the
// new one. Applier goroutine only.
func (m *Mirror) applyChannel(ctx context.Context, v *vhostMirror) (*brokerChan, error) {
	m.mu.Lock()
	ch := v.ch
	m.mu.Unlock()
	if ch.Err() == nil {
		return ch, nil
	}
	if err := m.openApplyChannel(ctx, v); err != nil {
		m.vhostFailed(v, err)
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return v.ch, nil
}

// openApplyChannel opens the vhost's apply channel in confirm mode.
func (m *Mirror) openApplyChannel(ctx context.Context, v *vhostMirror) error {
	ch, err := v.pub.openChannel(ctx, chanHandlers{
		async:  func(meth amqp.Method) { m.confirmed(v, meth) },
		closed: func(err error) { m.applyChannelClosed(v, err) },
	})
	if err != nil {
		return err
	}
	if _, err := ch.rpc(ctx, &amqp.ConfirmSelect{}); err != nil {
		return err
	}
	m.mu.Lock()
	v.ch, v.seq = ch, 0
	m.mu.Unlock()
	return nil
}

func (m *Mirror) applyPublish(v *vhostMirror, op *Op, done func(error)) {
	exists, err := m.exchangeExists(v, op.Exchange)
	if err != nil || !exists {
		// Not published here, but counted: a queue started after it takes
		// it by sync (its id is below the queue's since). A missing
		// exchange: the master's broker refused it too (404, channel
		// closed there), so the message went nowhere, as here.
		m.mu.Lock()
		m.sawPublish(op.ID)
		m.mu.Unlock()
		m.completeNow(v, done, err)
		return
	}
	m.publish(v, op.ID, op.Exchange, op.RoutingKey, op.Mandatory, op.Header, op.Body, done)
}

// exchangeExists reports whether the mirror broker has the exchange, from
// the cache or a passive declare on the probe channel.
func (m *Mirror) exchangeExists(v *vhostMirror, name string) (bool, error) {
	if name == "" {
		return true, nil
	}
	if ok, known := v.exchanges[name]; known {
		return ok, nil
	}
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.Timeout)
	defer cancel()
	if v.probe == nil || v.probe.Err() != nil {
		ch, err := v.pub.openChannel(ctx, chanHandlers{})
		if err != nil {
			m.vhostFailed(v, err)
			return false, err
		}
		v.probe = ch
	}
	_, err := v.probe.rpc(ctx, &amqp.ExchangeDeclare{Exchange: name, Passive: true})
	exists := err == nil
	if err != nil {
		var be *BrokerError
		if !errors.As(err, &be) || be.Connection || be.Code != amqp.NotFound {
			if !errors.As(err, &be) || be.Connection {
				m.vhostFailed(v, err)
			}
			return false, fmt.Errorf("replicate: checking exchange %q on the mirror broker: %w", name, err)
		}
	}
	if len(v.exchanges) >= maxExchangeCache {
		clear(v.exchanges)
	}
	v.exchanges[name] = exists
	return exists, nil
}

// sawPublish moves firstID and maxID for a replicated publish's id.
// Called with m.mu held.
func (m *Mirror) sawPublish(id uint64) {
	if m.firstID == 0 || id>>40 > m.firstID>>40 {
		m.firstID = id
	}
	m.maxID = max(m.maxID, id)
	for _, q := range m.sinceUnset {
		if q.since == 0 {
			q.since = id
		}
	}
	clear(m.sinceUnset)
	m.sinceUnset = m.sinceUnset[:0]
}

// publish publishes on the apply channel; done runs on the broker's
// confirm. id is a replicated publish's (counted by sawPublish), 0 for
// sync and moved copies.
func (m *Mirror) publish(v *vhostMirror, id uint64, exchange, key string, mandatory bool, header, body []byte, done func(error)) {
	m.mu.Lock()
	for v.unconf >= m.cfg.MaxInFlight && v.err == nil && !m.closed {
		m.cond.Wait()
	}
	if id != 0 {
		m.sawPublish(id)
	}
	if err := m.failedLocked(v); err != nil {
		m.mu.Unlock()
		done(err)
		return
	}
	if v.ch.Err() != nil {
		m.mu.Unlock()
		ctx, cancel := context.WithTimeout(m.ctx, m.cfg.Timeout)
		_, err := m.applyChannel(ctx, v)
		cancel()
		if err != nil {
			done(err)
			return
		}
		m.mu.Lock()
	}
	v.seq++
	v.unconf++
	v.pending = append(v.pending, &pendingOp{seq: v.seq, done: done})
	ch := v.ch
	m.mu.Unlock()
	if err := ch.publish(exchange, key, mandatory, header, body); err != nil {
		m.vhostFailed(v, err)
	}
}

func (m *Mirror) failedLocked(v *vhostMirror) error {
	if m.closed {
		return ErrMirrorClosed
	}
	return v.err
}

// confirmed handles basic.ack and basic.nack on the apply channel.
func (m *Mirror) confirmed(v *vhostMirror, meth amqp.Method) {
	var tag uint64
	var multiple bool
	var err error
	switch c := meth.(type) {
	case *amqp.BasicAck:
		tag, multiple = c.DeliveryTag, c.Multiple
	case *amqp.BasicNack:
		tag, multiple = c.DeliveryTag, c.Multiple
		err = fmt.Errorf("replicate: mirror broker nacked publish %d", tag)
	default:
		return
	}
	m.mu.Lock()
	for _, p := range v.pending {
		if p.seq == 0 || p.complete {
			continue
		}
		if p.seq == tag || (multiple && p.seq < tag) {
			p.complete, p.err = true, err
			v.unconf--
		}
		if p.seq >= tag {
			break
		}
	}
	m.cond.Broadcast()
	m.mu.Unlock()
	m.report(v)
}

// report calls the done callbacks of the vhost's completed ops at the head
// of its queue, in order.
func (m *Mirror) report(v *vhostMirror) {
	m.calling.Lock()
	defer m.calling.Unlock()
	m.mu.Lock()
	n := 0
	for n < len(v.pending) && v.pending[n].complete {
		n++
	}
	ready := v.pending[:n:n]
	v.pending = v.pending[n:]
	if len(v.pending) == 0 {
		v.pending = nil
	}
	m.mu.Unlock()
	for _, p := range ready {
		p.done(m.closingErr(p.err))
	}
}

// closingErr makes an error caused by Close (cancelled requests) say so.
func (m *Mirror) closingErr(err error) error {
	if err != nil && m.ctx.Err() != nil && !errors.Is(err, ErrMirrorClosed) {
		return fmt.Errorf("%w (%v)", ErrMirrorClosed, err)
	}
	return err
}

// completeNow queues an op that is already applied and reports it in order.
func (m *Mirror) completeNow(v *vhostMirror, done func(error), err error) {
	err = m.closingErr(err)
	m.mu.Lock()
	v.pending = append(v.pending, &pendingOp{done: done, complete: true, err: err})
	m.mu.Unlock()
	m.report(v)
}

// applyChannelClosed fails the unconfirmed publishes of a closed apply
// channel. A topology op that fails closes the channel too; it then has no
// publish in flight (applyTopology waits for them first) and reopens it.
func (m *Mirror) applyChannelClosed(v *vhostMirror, err error) {
	m.mu.Lock()
	for _, p := range v.pending {
		if p.seq != 0 && !p.complete {
			p.complete, p.err = true, fmt.Errorf("replicate: publish not confirmed: %w", err)
			v.unconf--
		}
	}
	m.cond.Broadcast()
	m.mu.Unlock()
	m.report(v)
}

// vhostFailed marks the vhost's connections as lost: every op not reported
// yet, and every later op, fails. The mirror must be synced again.
func (m *Mirror) vhostFailed(v *vhostMirror, err error) {
	err = m.closingErr(err) // closing: requests were cancelled, nothing went wrong
	m.mu.Lock()
	if v.err == nil {
		v.err = fmt.Errorf("replicate: mirror broker connection for vhost %q lost: %w", v.name, err)
		if !errors.Is(err, ErrMirrorClosed) {
			m.log.Error().Err(err).Str("vhost", v.name).Msg("mirror: broker connection lost; the mirror needs a sync")
		}
	}
	for _, p := range v.pending {
		if !p.complete {
			p.complete, p.err = true, v.err
			if p.seq != 0 {
				v.unconf--
			}
		}
	}
	m.cond.Broadcast()
	m.mu.Unlock()
	m.report(v)
}

// drain waits until every publish of the vhost is confirmed (or failed).
func (m *Mirror) drain(v *vhostMirror) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for v.unconf > 0 && v.err == nil && !m.closed {
		m.cond.Wait()
	}
	return m.failedLocked(v)
}

// Close stops the mirror without releasing: its broker connections close,
// so the broker requeues the held copies as Release would. Ops not reported
// yet fail with ErrMirrorClosed.
func (m *Mirror) Close() error {
	m.mu.Lock()
	if m.shut {
		m.mu.Unlock()
		m.wg.Wait()
		return nil
	}
	m.closed, m.shut = true, true
	vs := make([]*vhostMirror, 0, len(m.vhosts))
	for _, v := range m.vhosts {
		vs = append(vs, v)
	}
	m.cond.Broadcast()
	m.mu.Unlock()
	m.cancel()
	for _, v := range vs {
		v.pub.close()
		v.cons.close()
		m.vhostFailed(v, ErrMirrorClosed)
	}
	m.wg.Wait()
	return nil
}
