package proxy

import (
	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// The master core's replication hooks (docs/REPLICATION.md). They run inside
// sessionState's lock, from the pumps, only when a Replicator is set:
//
//   - client → broker: each publish is stamped with x-mirror-id and, once
//     its content is complete, handed to the Replicator; acks, nacks and
//     rejects of stamped deliveries become Settle ops; topology methods
//     become Topology ops when the broker answers -ok.
//   - broker → client: the stamp is stripped from every delivery, get-ok
//     and return; the broker's confirms and tx.commit-ok are held until the
//     Replicator says their ops are stable.

// replChannel is one channel's replication state on the master.
type replChannel struct {
	asm     pubAsm
	dlv     dlvPending
	unacked dlvRing  // guarded by sessionState.ringMu too
	taken   []dlvEnt // scratch: entries a settle took from unacked
	gets    []getReq // basic.get requests waiting for get-ok / get-empty
	topo    []byte   // a synchronous topology request waiting for its -ok

	// Transactions: ops wait for the commit; commit-ok waits for them.
	txOps    []txOp
	commitOk []byte // held tx.commit-ok frame
	commitAt Ticket

	lastTicket Ticket // the newest op this channel made
	ids        []uint64

	// A served leg's confirm-mode publish: its method frame waits for the
	// header, whose front key says whether the message is stored already
	// (pubMethod, pubOut); a dropped one's content is not forwarded
	// (dropping), and skipped lists, ascending, the sequence numbers of
	// the leg's publishes the broker never saw, so the broker's confirm
	// numbers can be mapped back.
	pubMethod, pubOut []byte
	pubHeld           bool
	dropping          bool
	skipped           []uint64

	// held is a delivery's method frame, held back until its header shows
	// the message's id (it may need the redelivered flag); out is where
	// the two are put together.
	held, out []byte
}

// pubAsm gathers a publish as it passes, to hand it over whole.
type pubAsm struct {
	id         uint64
	key        uint64
	exchange   []byte
	routingKey []byte
	mandatory  bool
	header     []byte
	body       []byte
}

type dlvPending struct {
	active bool
	queue  string
	noAck  bool
	tag    uint64
	settle bool // a delivery (not a return): its id is tracked
}

type getReq struct {
	queue string
	noAck bool
}

// txOp is an op held until tx.commit-ok: a publish, or else a settle.
type txOp struct {
	pub    *Publish
	settle settleReq
}

// settleReq is a client's basic.ack, nack or reject.
type settleReq struct {
	tag                     uint64
	multiple, requeue, drop bool
}

// dlvRing maps a channel's outstanding delivery tags to (queue, id). Tags
// on a channel are consecutive, so lookup is by index.
type dlvRing struct {
	first uint64 // tag of ents[head]
	ents  []dlvEnt
	head  int
}

type dlvEnt struct {
	queue string
	id    uint64
	live  bool
}

func (r *dlvRing) push(tag uint64, queue string, id uint64) {
	if r.head == len(r.ents) {
		r.ents, r.head, r.first = r.ents[:0], 0, tag
	}
	// Tags without a tracked entry (unstamped messages) keep the index dense.
	for r.first+uint64(len(r.ents)-r.head) < tag {
		r.ents = append(r.ents, dlvEnt{})
	}
	r.ents = append(r.ents, dlvEnt{queue: queue, id: id, live: true})
}

// take removes tag (and with multiple every older one) and calls fn for each
// live entry removed.
func (r *dlvRing) take(tag uint64, multiple bool, fn func(queue string, id uint64)) {
	if r.head == len(r.ents) || tag < r.first {
		return
	}
	last := int(tag-r.first) + r.head
	if last >= len(r.ents) {
		last = len(r.ents) - 1
	}
	from := last
	if multiple {
		from = r.head
	}
	for i := from; i <= last; i++ {
		if e := &r.ents[i]; e.live {
			fn(e.queue, e.id)
			e.live = false
		}
	}
	for r.head < len(r.ents) && !r.ents[r.head].live {
		r.head++
		r.first++
	}
	if r.head > 1024 && r.head > len(r.ents)/2 {
		n := copy(r.ents, r.ents[r.head:])
		r.ents, r.head = r.ents[:n], 0
	}
}

// outstanding appends the ids of a vhost's queue delivered on the
// session's channels and not settled.
//
// It takes only ringMu, a leaf lock: a session may call the Replicator
// (which calls Outstanding) while holding its own mu.
func (s *sessionState) outstanding(vhost, queue string, ids []uint64) []uint64 {
	s.ringMu.Lock()
	defer s.ringMu.Unlock()
	if s.vhost != vhost {
		return ids
	}
	for _, ch := range s.channels {
		if ch == nil {
			continue
		}
		for _, e := range ch.r.unacked.ents[ch.r.unacked.head:] {
			if e.live && e.queue == queue {
				ids = append(ids, e.id)
			}
		}
	}
	return ids
}

// clientPublish starts assembling a publish (client → broker).
func (s *sessionState) replPublish(ch *channelState, p []byte) error {
	exchange, routingKey, mandatory, err := amqp.PeekBasicPublish(p)
	if err != nil {
		return err
	}
	a := &ch.r.asm
	a.id = s.repl.NextID()
	a.exchange = append(a.exchange[:0], exchange...)
	a.routingKey = append(a.routingKey[:0], routingKey...)
	a.mandatory = mandatory
	a.body = a.body[:0]
	return nil
}

// replPublishHeader stamps the publish's content header and returns the
// frame to send instead of f. With fromFront the header carries a front
// stamp (the front's key), which becomes the x-mirror-id stamp. A nil
// frame and no error: the publish is a re-sent one the node stored
// already, dropped (see dropStored).
func (s *sessionState) replPublishHeader(ch *channelState, f amqp.Frame, fromFront bool) ([]byte, error) {
	a := &ch.r.asm
	a.key = 0
	var err error
	took := false
	if fromFront {
		a.header = append(a.header[:0], f.Payload...)
		if a.key, took, err = amqp.TakeFrontKey(a.header, a.id); err != nil {
			return nil, err
		}
	}
	if !took {
		if a.header, err = amqp.AppendStampedHeader(a.header[:0], f.Payload, a.id); err != nil {
			return nil, err
		}
	}
	if ch.r.pubHeld {
		ch.r.pubHeld = false
		if a.key != 0 && s.dedup.Stored(a.key) {
			s.dropStored(ch)
			return nil, nil
		}
	}
	s.scratch = amqp.AppendFrame(s.scratch[:0], amqp.FrameHeader, f.Channel, a.header)
	out := s.scratch
	if len(ch.r.pubMethod) > 0 {
		ch.r.pubOut = append(append(ch.r.pubOut[:0], ch.r.pubMethod...), s.scratch...)
		ch.r.pubMethod = ch.r.pubMethod[:0]
		out = ch.r.pubOut
	}
	if ch.in.state == contentNone {
		return out, s.replPublishDone(ch)
	}
	return out, nil
}

// dropStored drops a publish a moved session sent again whose message
// this node stored already (it applied the old master's op for it): the
// broker never sees it, the client gets its confirm as soon as those
// before it have theirs, and the broker's later confirm numbers skip it.
func (s *sessionState) dropStored(ch *channelState) {
	seq := ch.nextSeq - 1
	ch.r.pubMethod = ch.r.pubMethod[:0]
	ch.r.dropping = ch.in.state != contentNone
	ch.r.skipped = append(ch.r.skipped, seq)
	before := ch.unconfirmed.withheld
	ch.unconfirmed.brokerConfirm(seq, false, false)
	ch.unconfirmed.setTicket(seq, 0)
	s.withheld.Add(int64(ch.unconfirmed.withheld - before))
	if s.toClient != nil {
		s.releaseToClient(ch)
		s.flushClient = true
	}
	if s.deduped != nil {
		s.deduped.Add(1)
	}
}

// legSeq maps the broker's confirm number to the leg's, past the
// publishes dropped as stored already.
func (ch *channelState) legSeq(seq uint64) uint64 {
	for _, d := range ch.r.skipped {
		if d > seq {
			break
		}
		seq++
	}
	return seq
}

func (s *sessionState) replPublishBody(ch *channelState, f amqp.Frame) error {
	ch.r.asm.body = append(ch.r.asm.body, f.Payload...)
	if ch.in.state == contentNone {
		return s.replPublishDone(ch)
	}
	return nil
}

// replPublishDone hands the complete publish over (or holds it for the
// transaction's commit).
func (s *sessionState) replPublishDone(ch *channelState) error {
	a := &ch.r.asm
	p := Publish{Vhost: s.vhost, ID: a.id, Exchange: a.exchange, RoutingKey: a.routingKey, Mandatory: a.mandatory, Header: a.header, Body: a.body, Key: a.key}
	if ch.tx {
		cp := p
		cp.Exchange, cp.RoutingKey = clone(p.Exchange), clone(p.RoutingKey)
		cp.Header, cp.Body = clone(p.Header), clone(p.Body)
		ch.r.txOps = append(ch.r.txOps, txOp{pub: &cp})
		return nil
	}
	t, err := s.repl.Publish(p)
	if err != nil {
		return connErr(amqp.InternalError, "INTERNAL_ERROR - replication: %v", err)
	}
	ch.r.lastTicket = t
	if ch.confirm {
		ch.unconfirmed.setTicket(ch.nextSeq-1, t)
	}
	return nil
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

// replSettle turns a client's ack, nack or reject into Settle ops. In a
// transaction it is kept as it came and resolved at the commit: until
// then the broker keeps the deliveries unacked (a rollback leaves them so,
// and the client may settle them again).
func (s *sessionState) replSettle(ch *channelState, key uint32, p []byte) error {
	var r settleReq
	var err error
	switch key {
	case amqp.BasicAckID:
		r.tag, r.multiple, err = amqp.PeekBasicAck(p)
	case amqp.BasicNackID:
		r.tag, r.multiple, r.requeue, err = amqp.PeekBasicNack(p)
	case amqp.BasicRejectID:
		r.tag, r.requeue, err = amqp.PeekBasicReject(p)
	}
	if err != nil {
		return err
	}
	if r.tag <= ch.tagBase {
		return nil // a delivery of the previous broker: nothing to settle here
	}
	r.drop = key != amqp.BasicAckID
	if ch.tx {
		ch.r.txOps = append(ch.r.txOps, txOp{settle: r})
		return nil
	}
	return s.settleTags(ch, r)
}

// settleTags takes the deliveries a settle covers from the channel's ring
// and hands acks and drops to the Replicator, grouped by queue in order
// (most channels consume from one queue). Requeues make no op: the copies
// stay held, as the master's message stays queued.
func (s *sessionState) settleTags(ch *channelState, r settleReq) error {
	// Taken under ringMu (Outstanding reads the rings), settled after.
	ch.r.taken = ch.r.taken[:0]
	s.ringMu.Lock()
	ch.r.unacked.take(r.tag, r.multiple, func(q string, id uint64) {
		ch.r.taken = append(ch.r.taken, dlvEnt{queue: q, id: id})
	})
	s.ringMu.Unlock()
	if r.requeue {
		return nil
	}
	var queue string
	ch.r.ids = ch.r.ids[:0]
	flush := func() error {
		if len(ch.r.ids) == 0 {
			return nil
		}
		t, err := s.repl.Settle(s.vhost, queue, ch.r.ids, r.drop)
		ch.r.ids = ch.r.ids[:0]
		if err != nil {
			return connErr(amqp.InternalError, "INTERNAL_ERROR - replication: %v", err)
		}
		ch.r.lastTicket = t
		return nil
	}
	for _, e := range ch.r.taken {
		if e.queue != queue {
			if err := flush(); err != nil {
				return err
			}
			queue = e.queue
		}
		ch.r.ids = append(ch.r.ids, e.id)
	}
	return flush()
}

// replClientMethod records what a rare client method means for
// replication: basic.get's queue, a topology request.
func (s *sessionState) replClientMethod(ch *channelState, key uint32, p []byte) error {
	switch key {
	case amqp.BasicGetID:
		m, err := amqp.DecodeMethod(p)
		if err != nil {
			return err
		}
		g := m.(*amqp.BasicGet)
		ch.r.gets = append(ch.r.gets, getReq{queue: g.Queue, noAck: g.NoAck})
	case amqp.ExchangeDeclareID, amqp.ExchangeDeleteID, amqp.ExchangeBindID, amqp.ExchangeUnbindID,
		amqp.QueueDeclareID, amqp.QueueBindID, amqp.QueuePurgeID, amqp.QueueDeleteID, amqp.QueueUnbindID:
		if nowait(key, p) {
			return s.topology(ch, p)
		}
		ch.r.topo = append(ch.r.topo[:0], p...)
	case amqp.TxRollbackID:
		ch.r.txOps = ch.r.txOps[:0]
	}
	return nil
}

// nowait reads the no-wait bit of a topology method.
func nowait(key uint32, p []byte) bool {
	m, err := amqp.DecodeMethod(p)
	if err != nil {
		return false
	}
	switch m := m.(type) {
	case *amqp.ExchangeDeclare:
		return m.NoWait
	case *amqp.ExchangeDelete:
		return m.NoWait
	case *amqp.ExchangeBind:
		return m.NoWait
	case *amqp.ExchangeUnbind:
		return m.NoWait
	case *amqp.QueueDeclare:
		return m.NoWait
	case *amqp.QueueBind:
		return m.NoWait
	case *amqp.QueuePurge:
		return m.NoWait
	case *amqp.QueueDelete:
		return m.NoWait
	}
	return false // queue.unbind has no no-wait
}

func (s *sessionState) topology(ch *channelState, method []byte) error {
	t, err := s.repl.Topology(s.vhost, method)
	if err != nil {
		return connErr(amqp.InternalError, "INTERNAL_ERROR - replication: %v", err)
	}
	ch.r.lastTicket = t
	return nil
}

// replUpstreamMethod handles the broker's methods that matter for
// replication. It reports whether the frame is held back (not forwarded).
func (s *sessionState) replUpstreamMethod(ch *channelState, key uint32, f amqp.Frame) (held bool, err error) {
	switch key {
	case amqp.BasicDeliverID:
		ctag, tag, _, _, _, err := amqp.PeekBasicDeliver(f.Payload)
		if err != nil {
			return false, err
		}
		c := ch.consumers[string(ctag)]
		ch.r.dlv = dlvPending{active: true, tag: tag + ch.tagBase, settle: c != nil}
		if c != nil {
			ch.r.dlv.queue, ch.r.dlv.noAck = c.queue, c.noAck
		}
	case amqp.BasicGetOkID:
		tag, _, _, _, _, err := amqp.PeekBasicGetOk(f.Payload)
		if err != nil {
			return false, err
		}
		ch.r.dlv = dlvPending{active: true, tag: tag + ch.tagBase}
		if len(ch.r.gets) > 0 {
			g := ch.r.gets[0]
			ch.r.gets = ch.r.gets[1:]
			ch.r.dlv.queue, ch.r.dlv.noAck, ch.r.dlv.settle = g.queue, g.noAck, true
		}
	case amqp.BasicGetEmptyID:
		if len(ch.r.gets) > 0 {
			ch.r.gets = ch.r.gets[1:]
		}
	case amqp.BasicReturnID:
		ch.r.dlv = dlvPending{active: true}
	case amqp.ExchangeDeclareOkID, amqp.ExchangeDeleteOkID, amqp.ExchangeBindOkID, amqp.ExchangeUnbindOkID,
		amqp.QueueBindOkID, amqp.QueuePurgeOkID, amqp.QueueDeleteOkID, amqp.QueueUnbindOkID:
		if len(ch.r.topo) > 0 {
			err = s.topology(ch, ch.r.topo)
			ch.r.topo = ch.r.topo[:0]
		}
	case amqp.QueueDeclareOkID:
		if len(ch.r.topo) > 0 {
			err = s.topology(ch, namedDeclare(ch.r.topo, f.Payload))
			ch.r.topo = ch.r.topo[:0]
		}
	case amqp.TxCommitOkID:
		return s.replCommit(ch, f)
	}
	return false, err
}

// namedDeclare fills a server-named queue's name into its queue.declare.
func namedDeclare(req, ok []byte) []byte {
	m, err := amqp.DecodeMethod(req)
	if err != nil {
		return req
	}
	d := m.(*amqp.QueueDeclare)
	if d.Queue != "" {
		return req
	}
	okm, err := amqp.DecodeMethod(ok)
	if err != nil {
		return req
	}
	d.Queue = okm.(*amqp.QueueDeclareOk).Queue
	return amqp.AppendMethod(nil, d)
}

// replCommit sends the transaction's ops now that the broker committed it,
// and holds commit-ok until they are stable.
func (s *sessionState) replCommit(ch *channelState, f amqp.Frame) (bool, error) {
	for _, op := range ch.r.txOps {
		if op.pub == nil {
			if err := s.settleTags(ch, op.settle); err != nil {
				return false, err
			}
			continue
		}
		t, err := s.repl.Publish(*op.pub)
		if err != nil {
			return false, connErr(amqp.InternalError, "INTERNAL_ERROR - replication: %v", err)
		}
		ch.r.lastTicket = t
	}
	ch.r.txOps = ch.r.txOps[:0]
	if ch.r.lastTicket <= s.stable {
		return false, nil
	}
	ch.r.commitOk = append(ch.r.commitOk[:0], f.Raw...)
	ch.r.commitAt = ch.r.lastTicket
	return true, nil
}

// replDeliveryHeader strips the stamp from a delivery's content header in
// place and tracks its id; it returns the frame to pass on.
func (s *sessionState) replDeliveryHeader(ch *channelState, f amqp.Frame) ([]byte, error) {
	d := ch.r.dlv
	ch.r.dlv.active = false
	if !d.active {
		return s.withHeld(ch, f.Raw, 0, false), nil
	}
	raw, id, ok, err := amqp.StripMirrorIDFrame(f.Raw)
	if err != nil {
		return nil, err
	}
	raw = s.withHeld(ch, raw, id, ok)
	if !ok || !d.settle {
		return raw, nil
	}
	if d.noAck {
		// As for a client's ack (settle): a mirror that kept the copy
		// would deliver it again after a failover.
		if _, err := s.repl.Settle(s.vhost, d.queue, []uint64{id}, false); err != nil {
			return nil, connErr(amqp.InternalError, "INTERNAL_ERROR - replication: %v", err)
		}
		return raw, nil
	}
	s.ringMu.Lock()
	ch.r.unacked.push(d.tag, d.queue, id)
	s.ringMu.Unlock()
	return raw, nil
}

// holdDelivery keeps a delivery's method frame until its header (see
// replChannel.held). It reports whether it did.
func (s *sessionState) holdDelivery(ch *channelState, f amqp.Frame) bool {
	if s.redeliver == nil {
		return false
	}
	ch.r.held = append(ch.r.held[:0], f.Raw...)
	return true
}

// withHeld returns header preceded by the held method frame, flagged
// redelivered when the message (id, when known) is an older master's.
func (s *sessionState) withHeld(ch *channelState, header []byte, id uint64, known bool) []byte {
	if len(ch.r.held) == 0 {
		return header
	}
	m := ch.r.held
	if known && s.redeliver(id) {
		// holdDelivery keeps only frames decoded as basic.deliver or
		// basic.get-ok, the methods SetRedelivered accepts.
		_ = amqp.SetRedelivered(m[amqp.FrameHeaderSize : len(m)-1])
	}
	ch.r.out = append(append(ch.r.out[:0], m...), header...)
	ch.r.held = ch.r.held[:0]
	s.upCopy = true // the pump copies it before the next delivery reuses out
	return ch.r.out
}

// release appends the client confirms every resolved publish allows.
func (s *sessionState) release(dst []byte, ch *channelState) []byte {
	var freed int
	before := ch.unconfirmed.withheld
	dst, freed = ch.unconfirmed.release(dst, ch.id, s.stable)
	s.pendingSize -= freed
	s.withheld.Add(int64(ch.unconfirmed.withheld - before))
	return dst
}

// onStable is the Replicator's news: every op up to t is stable. It queues
// for the client the confirms and commit-oks that were waiting for it and
// reports whether it queued anything (the caller flushes).
func (s *sessionState) onStable(t Ticket) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t <= s.stable || s.toClient == nil || s.repl == nil {
		return false // before the handshake, or moved off this core
	}
	s.stable = t
	queued := false
	s.toClient.build(func(dst []byte) []byte {
		n := len(dst)
		for _, ch := range s.channels {
			if ch == nil {
				continue
			}
			if ch.confirm {
				dst = s.release(dst, ch)
			}
			if len(ch.r.commitOk) > 0 && ch.r.commitAt <= t {
				dst = append(dst, ch.r.commitOk...)
				ch.r.commitOk = ch.r.commitOk[:0]
			}
		}
		queued = len(dst) > n
		return dst
	})
	return queued
}

// appendConfirm appends a basic.ack (or basic.nack) frame for a publisher.
func appendConfirm(dst []byte, channel uint16, seq uint64, multiple, nack bool) []byte {
	if nack {
		return amqp.AppendMethodFrame(dst, channel, &amqp.BasicNack{DeliveryTag: seq, Multiple: multiple})
	}
	return amqp.AppendMethodFrame(dst, channel, &amqp.BasicAck{DeliveryTag: seq, Multiple: multiple})
}
