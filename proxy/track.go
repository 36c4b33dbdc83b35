package proxy

import (
	"math/rand/v2"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// Per-frame tracking of an open session. Only the methods the state needs
// are looked at; hot ones (publish, deliver, ack) through the codec's
// allocation-free Peek functions, rare ones decoded whole.

// fromClient tracks a frame the client sent after the handshake. It reports
// whether to forward the frame; an error is a connection-level fault to close
// the client's connection with.
func (s *sessionState) fromClient(f amqp.Frame) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f.Type == amqp.FrameHeartbeat {
		if f.Channel != 0 {
			return false, errHeartbeatOnChannel(f)
		}
		return false, nil
	}
	if f.Channel == 0 {
		return s.clientConnFrame(f)
	}
	ch := s.channel(f.Channel)
	if ch == nil {
		// The proxy knows no channel by this number: the broker does not
		// either (the proxy forgets a channel when the broker does), so
		// it judges the frame. Only channel.open is tracked.
		if f.Type == amqp.FrameMethod {
			if key, ok := amqp.MethodKey(f.Payload); ok && key == amqp.ChannelOpenID {
				s.openChannel(f.Channel)
			}
		}
		return true, nil
	}
	if err := ch.in.step(f); err != nil {
		return false, err
	}
	if ch.closing() {
		if fwd, done := s.clientOnClosing(ch, f); done {
			return fwd, nil
		}
	}
	if f.Type != amqp.FrameMethod {
		return s.clientContent(ch, f)
	}
	key, ok := amqp.MethodKey(f.Payload)
	if !ok {
		return false, errShortMethod(f)
	}
	switch key {
	case amqp.BasicPublishID:
		ch.in.state, ch.in.classID = contentHeader, 60
		if ch.confirm {
			seq := ch.nextSeq
			ch.nextSeq++
			s.pendingSize += ch.unconfirmed.begin(seq, f.Raw, s.pendingSize+len(f.Raw) <= s.maxPending)
		}
		if ch.tx {
			ch.txDirty = true
		}
		if s.repl != nil {
			if err := s.replPublish(ch, f.Payload); err != nil {
				return false, err
			}
			if s.dedup != nil && ch.confirm {
				// A front's publish: its header says whether the
				// message is stored here already (dropStored).
				ch.r.pubMethod = append(ch.r.pubMethod[:0], f.Raw...)
				ch.r.pubHeld = true
				return false, nil
			}
		}
	case amqp.BasicAckID, amqp.BasicNackID, amqp.BasicRejectID:
		if ch.tx {
			ch.txDirty = true
		}
		if s.repl != nil {
			if err := s.replSettle(ch, key, f.Payload); err != nil {
				return false, err
			}
		} else if ch.tagBase > 0 {
			return s.rebaseSettle(ch, key, f.Payload)
		}
	case amqp.ChannelOpenID:
		return false, connErr(amqp.ChannelError, "CHANNEL_ERROR - second 'channel.open' seen")
	case amqp.ChannelCloseID:
		ch.clientClosed = true
	case amqp.ChannelCloseOkID:
		// Not answering a close (the broker's is handled above): the
		// broker's channel judges it.
	default:
		if err := s.clientChannelMethod(ch, key, f.Payload); err != nil {
			return false, err
		}
		if awaitsReply(key) && !nowait(key, f.Payload) {
			ch.pending = append(ch.pending[:0], f.Raw...)
		}
		if s.repl != nil {
			return true, s.replClientMethod(ch, key, f.Payload)
		}
	}
	return true, nil
}

// clientOnClosing handles a client frame on a channel that either side is
// closing, after its content sequence was checked. done says the frame is
// handled (fwd: forward it); otherwise it goes the way of any frame on an
// open channel: the content of a method forwarded before the close, and
// the client's own channel.close crossing the broker's.
//
// A closing channel at the broker ignores every method but channel.close
// and channel.close-ok (RabbitMQ's rabbit_channel in state closing), so
// the proxy drops them, and their content, rather than replicate or track
// what the broker will not do.
func (s *sessionState) clientOnClosing(ch *channelState, f amqp.Frame) (fwd, done bool) {
	if f.Type != amqp.FrameMethod {
		if !ch.dropping {
			return false, false
		}
		if ch.in.state == contentNone {
			ch.dropping = false
		}
		return false, true
	}
	key, ok := amqp.MethodKey(f.Payload)
	if !ok {
		return false, false // a frame error, as on any channel
	}
	switch key {
	case amqp.ChannelCloseID:
		if ch.clientClosed {
			return !ch.gone, true // a second close: the broker's channel judges it
		}
		if ch.gone {
			// The broker side of this channel went with the old leg:
			// the client's close-ok to the broker's close ends it.
			ch.clientClosed = true
			return false, true
		}
		return false, false
	case amqp.ChannelCloseOkID:
		if !ch.brokerClosed {
			return !ch.gone, true
		}
		// The client answered the broker's close: the broker forgets the
		// channel when it reads this, and so may the client.
		ch.brokerClosed = false
		if ch.clientClosed && !ch.gone {
			s.oweCloseOk(ch.id)
		}
		s.closeChannel(ch)
		return !ch.gone, true
	case amqp.ChannelOpenID:
		if ch.gone {
			// The new broker never knew the old channel: this opens
			// the number there.
			s.closeChannel(ch)
			s.openChannel(ch.id)
			return true, true
		}
		if ch.clientClosed && !ch.brokerClosed {
			// Before the broker's close-ok: the broker opens it if it
			// forgot the old channel first (else it ignores it, and the
			// client waits, as it would directly). What follows is the
			// new channel's; the close-ok still owed is the old one's.
			s.oweCloseOk(ch.id)
			s.closeChannel(ch)
			s.openChannel(ch.id)
		}
		return true, true
	}
	if key == amqp.BasicPublishID {
		ch.in.state, ch.in.classID = contentHeader, 60
		ch.dropping = true
	}
	return false, true
}

// leaveClosing settles a closing channel when the session moves to another
// broker, where it is not opened, and reports whether the client's close
// is to be answered with close-ok (its answer was lost with the old leg).
// A close of the old broker's still waits for the client's close-ok, which
// the proxy takes: the new broker never knew the channel.
func (s *sessionState) leaveClosing(ch *channelState) (answer bool) {
	if !ch.closing() {
		return false
	}
	answer = ch.clientClosed
	ch.clientClosed, ch.gone = false, true
	if !ch.brokerClosed {
		s.closeChannel(ch)
	}
	return answer
}

// oweCloseOk records that the broker's next close-ok on channel id answers
// a channel the proxy forgot already (see staleCloseOks).
func (s *sessionState) oweCloseOk(id uint16) {
	if s.staleCloseOks == nil {
		s.staleCloseOks = make(map[uint16]int)
	}
	s.staleCloseOks[id]++
}

// errHeartbeatOnChannel is RabbitMQ's answer to a heartbeat frame on a
// channel other than 0.
func errHeartbeatOnChannel(f amqp.Frame) error { return errUnexpectedFrame(f) }

// errUnexpectedFrame is RabbitMQ's answer to a frame of a type that has no
// place where it came (rabbit_reader's unexpected_frame).
func errUnexpectedFrame(f amqp.Frame) error {
	return connErr(amqp.UnexpectedFrame, "UNEXPECTED_FRAME - type %d, %s", f.Type, amqp.Octets(f.Payload))
}

// errShortMethod is RabbitMQ's answer to a method frame too short to name
// its method (its frame analysis fails: unknown_frame).
func errShortMethod(f amqp.Frame) error {
	return connErr(amqp.FrameErrorCode, "FRAME_ERROR - type %d, %s: unknown_frame", f.Type, amqp.Octets(f.Payload))
}

// isChannelCloseOk: a channel.close-ok frame.
func isChannelCloseOk(f amqp.Frame) bool {
	if f.Type != amqp.FrameMethod {
		return false
	}
	k, _ := amqp.MethodKey(f.Payload)
	return k == amqp.ChannelCloseOkID
}

// awaitsReply: a channel method the broker answers (with no-wait unset);
// the front keeps the one in flight to send it again after a move.
func awaitsReply(key uint32) bool {
	switch key {
	case amqp.ExchangeDeclareID, amqp.ExchangeDeleteID, amqp.ExchangeBindID, amqp.ExchangeUnbindID,
		amqp.QueueDeclareID, amqp.QueueBindID, amqp.QueuePurgeID, amqp.QueueDeleteID, amqp.QueueUnbindID,
		amqp.BasicQosID, amqp.BasicConsumeID, amqp.BasicCancelID, amqp.BasicGetID, amqp.BasicRecoverID,
		amqp.ConfirmSelectID, amqp.TxSelectID, amqp.TxCommitID, amqp.TxRollbackID, amqp.ChannelFlowID:
		return true
	}
	return false
}

// isReply: a broker's answer to a channel method the client sent.
func isReply(key uint32) bool {
	switch key {
	case amqp.ExchangeDeclareOkID, amqp.ExchangeDeleteOkID, amqp.ExchangeBindOkID, amqp.ExchangeUnbindOkID,
		amqp.QueueDeclareOkID, amqp.QueueBindOkID, amqp.QueuePurgeOkID, amqp.QueueDeleteOkID, amqp.QueueUnbindOkID,
		amqp.BasicQosOkID, amqp.BasicConsumeOkID, amqp.BasicCancelOkID, amqp.BasicGetOkID, amqp.BasicGetEmptyID,
		amqp.BasicRecoverOkID, amqp.ConfirmSelectOkID, amqp.TxSelectOkID, amqp.TxCommitOkID, amqp.TxRollbackOkID,
		amqp.ChannelFlowOkID:
		return true
	}
	return false
}

// rebaseSettle maps a client's ack, nack or reject to the broker the
// session moved to: tags at or below tagBase were the old broker's
// deliveries, which it requeued when the session left; settling them is
// dropped, never applied to another message.
func (s *sessionState) rebaseSettle(ch *channelState, key uint32, p []byte) (bool, error) {
	var tag uint64
	var multiple bool
	var err error
	switch key {
	case amqp.BasicAckID:
		tag, multiple, err = amqp.PeekBasicAck(p)
	case amqp.BasicNackID:
		tag, multiple, _, err = amqp.PeekBasicNack(p)
	default:
		tag, _, err = amqp.PeekBasicReject(p)
	}
	if err != nil {
		return false, err
	}
	if tag == 0 && multiple {
		return true, nil // everything outstanding: the new broker's
	}
	if tag <= ch.tagBase {
		return false, nil
	}
	return true, amqp.SetAckTag(p, tag-ch.tagBase)
}

// clientChannelMethod tracks the rare channel methods a client sends.
func (s *sessionState) clientChannelMethod(ch *channelState, key uint32, p []byte) error {
	switch key {
	case amqp.BasicQosID, amqp.BasicConsumeID, amqp.BasicCancelID, amqp.ConfirmSelectID,
		amqp.TxSelectID, amqp.TxCommitID, amqp.TxRollbackID, amqp.ChannelFlowID:
	default:
		if amqp.MethodName(key) == "" {
			_, err := amqp.DecodeMethod(p) // the codec names the fault as RabbitMQ does
			return err
		}
		return nil
	}
	m, err := amqp.DecodeMethod(p)
	if err != nil {
		return err
	}
	switch m := m.(type) {
	case *amqp.BasicQos:
		ch.qosCount, ch.qosSize, ch.qosGlobal = m.PrefetchCount, m.PrefetchSize, m.Global
	case *amqp.BasicConsume:
		c := &consumer{tag: m.ConsumerTag, queue: m.Queue, noLocal: m.NoLocal, noAck: m.NoAck, exclusive: m.Exclusive, args: m.Arguments}
		if v, ok := m.Arguments.Get("x-cancel-on-ha-failover"); ok {
			c.cancelOnFailover, _ = v.(bool)
		}
		if m.NoWait && c.tag != "" {
			ch.addConsumer(c)
		} else {
			ch.consumeQ = append(ch.consumeQ, c)
		}
	case *amqp.BasicCancel:
		delete(ch.consumers, m.ConsumerTag)
	case *amqp.ConfirmSelect:
		if !ch.confirm {
			ch.confirm, ch.nextSeq = true, 1
		}
	case *amqp.TxSelect:
		ch.tx = true
	case *amqp.TxCommit, *amqp.TxRollback:
		ch.txDirty = false
	case *amqp.ChannelFlow:
		ch.flowOff = !m.Active
	}
	return nil
}

// clientConnFrame tracks channel 0 after the handshake.
func (s *sessionState) clientConnFrame(f amqp.Frame) (bool, error) {
	if f.Type != amqp.FrameMethod {
		return false, errUnexpectedFrame(f)
	}
	key, ok := amqp.MethodKey(f.Payload)
	if !ok {
		return false, errShortMethod(f)
	}
	switch key {
	case amqp.ConnectionCloseID:
		s.closing = true
	case amqp.ConnectionCloseOkID, amqp.ConnectionUpdateSecretID, amqp.ConnectionBlockedID, amqp.ConnectionUnblockedID:
	default:
		if amqp.MethodName(key) == "" {
			_, err := amqp.DecodeMethod(f.Payload)
			return false, err
		}
		// RabbitMQ's rabbit_reader, for any known method on channel 0
		// that is not for an open connection.
		return false, connErr(amqp.ChannelError, "CHANNEL_ERROR - unexpected method in connection state running")
	}
	return true, nil
}

// fromUpstream tracks a frame the broker sent after the handshake and
// reports whether to pass it to the client.
func (s *sessionState) fromUpstream(f amqp.Frame) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f.Type == amqp.FrameHeartbeat {
		return false, nil
	}
	if f.Channel == 0 {
		return s.upstreamConnFrame(f)
	}
	if n := s.staleCloseOks[f.Channel]; n > 0 && isChannelCloseOk(f) {
		// The answer to the close of a channel the client has finished
		// with already (see staleCloseOks): the client judges it, as
		// it would from the broker directly.
		if n == 1 {
			delete(s.staleCloseOks, f.Channel)
		} else {
			s.staleCloseOks[f.Channel] = n - 1
		}
		return true, nil
	}
	ch := s.channel(f.Channel)
	if ch == nil {
		// The broker answers on channels the client closed (close-ok races);
		// pass it on and let the client judge.
		return true, nil
	}
	if err := ch.out.step(f); err != nil {
		return false, err
	}
	if f.Type != amqp.FrameMethod {
		if s.repl != nil && f.Type == amqp.FrameHeader {
			out, err := s.replDeliveryHeader(ch, f)
			if err != nil {
				return false, err
			}
			s.upOut, s.upRepl = out, true
		}
		return true, nil
	}
	key, ok := amqp.MethodKey(f.Payload)
	if !ok {
		return false, errShortMethod(f)
	}
	if len(ch.pending) > 0 && isReply(key) {
		ch.pending = ch.pending[:0]
	}
	switch key {
	case amqp.BasicDeliverID, amqp.BasicGetOkID:
		ch.out.state, ch.out.classID = contentHeader, 60
		tag, err := peekDeliveryTag(key, f.Payload)
		if err != nil {
			return false, err
		}
		if s.repl != nil {
			if _, err := s.replUpstreamMethod(ch, key, f); err != nil {
				return false, err
			}
		}
		tag += ch.tagBase
		if ch.tagBase != 0 {
			if err := amqp.SetDeliveryTag(f.Payload, tag); err != nil {
				return false, err
			}
		}
		ch.lastTag = tag
		if s.repl != nil && s.holdDelivery(ch, f) {
			return false, nil // sent with its header
		}
	case amqp.BasicReturnID:
		ch.out.state, ch.out.classID = contentHeader, 60
		if s.repl != nil {
			ch.r.dlv = dlvPending{active: true}
		}
	case amqp.BasicAckID:
		if ch.confirm {
			tag, multiple, err := amqp.PeekBasicAck(f.Payload)
			if err != nil {
				return false, err
			}
			if s.repl != nil {
				return false, s.heldConfirm(ch, tag, multiple, false)
			}
			tag = ch.seqs.client(tag)
			if ch.seqs != nil {
				if err := amqp.SetAckTag(f.Payload, tag); err != nil {
					return false, err
				}
			}
			s.pendingSize -= ch.unconfirmed.confirm(tag, multiple)
		}
	case amqp.BasicNackID:
		if ch.confirm {
			tag, multiple, _, err := amqp.PeekBasicNack(f.Payload)
			if err != nil {
				return false, err
			}
			if s.repl != nil {
				return false, s.heldConfirm(ch, tag, multiple, true)
			}
			tag = ch.seqs.client(tag)
			if ch.seqs != nil {
				if err := amqp.SetAckTag(f.Payload, tag); err != nil {
					return false, err
				}
			}
			s.pendingSize -= ch.unconfirmed.confirm(tag, multiple)
		}
	case amqp.ChannelCloseID:
		ch.brokerClosed = true
	case amqp.ChannelCloseOkID:
		if ch.clientClosed {
			ch.clientClosed = false
			if !ch.brokerClosed {
				s.closeChannel(ch)
			}
		}
	case amqp.BasicGetEmptyID, amqp.TxCommitOkID,
		amqp.ExchangeDeclareOkID, amqp.ExchangeDeleteOkID, amqp.ExchangeBindOkID, amqp.ExchangeUnbindOkID,
		amqp.QueueDeclareOkID, amqp.QueueBindOkID, amqp.QueuePurgeOkID, amqp.QueueDeleteOkID, amqp.QueueUnbindOkID:
		if s.repl != nil {
			held, err := s.replUpstreamMethod(ch, key, f)
			return !held && err == nil, err
		}
	case amqp.BasicConsumeOkID, amqp.BasicCancelID, amqp.BasicCancelOkID:
		m, err := amqp.DecodeMethod(f.Payload)
		if err != nil {
			return false, err
		}
		switch m := m.(type) {
		case *amqp.BasicConsumeOk:
			if len(ch.consumeQ) > 0 {
				c := ch.consumeQ[0]
				ch.consumeQ = ch.consumeQ[1:]
				c.tag = m.ConsumerTag
				ch.addConsumer(c)
			}
		case *amqp.BasicCancel:
			// Server-sent cancel (queue deleted, failover): only for clients
			// that said they understand it.
			delete(ch.consumers, m.ConsumerTag)
			if !s.caps.consumerCancelNotify {
				return false, nil
			}
		case *amqp.BasicCancelOk:
			delete(ch.consumers, m.ConsumerTag)
		}
	}
	return true, nil
}

func (s *sessionState) upstreamConnFrame(f amqp.Frame) (bool, error) {
	if f.Type != amqp.FrameMethod {
		return false, connErr(amqp.CommandInvalid, "COMMAND_INVALID - broker sent a content frame on channel 0")
	}
	key, _ := amqp.MethodKey(f.Payload)
	switch key {
	case amqp.ConnectionCloseID:
		s.closing = true
	case amqp.ConnectionBlockedID, amqp.ConnectionUnblockedID:
		return s.caps.connectionBlocked, nil
	}
	return true, nil
}

func (s *sessionState) openChannel(id uint16) {
	s.ringMu.Lock()
	for int(id) >= len(s.channels) {
		s.channels = append(s.channels, nil)
	}
	s.channels[id] = &channelState{id: id}
	s.ringMu.Unlock()
	s.open++
}

func (s *sessionState) closeChannel(ch *channelState) {
	s.pendingSize -= ch.unconfirmed.live
	s.withheld.Add(-int64(ch.unconfirmed.withheld))
	s.ringMu.Lock()
	s.channels[ch.id] = nil
	s.ringMu.Unlock()
	s.open--
}

func (ch *channelState) addConsumer(c *consumer) {
	if ch.consumers == nil {
		ch.consumers = make(map[string]*consumer)
	}
	ch.consumers[c.tag] = c
}

// movable reports whether the session's state can be replayed on another
// broker, and if not, why.
func (s *sessionState) movable() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ch := range s.channels {
		if ch == nil {
			continue
		}
		if ch.tx && ch.txDirty {
			return false, "a transaction is open on channel " + itoa(int(ch.id))
		}
		if ch.unconfirmed.dropped {
			return false, "unconfirmed publishes on channel " + itoa(int(ch.id)) + " exceed the replay bound"
		}
	}
	return true, ""
}

// peekDeliveryTag reads the delivery tag of basic.deliver or basic.get-ok.
func peekDeliveryTag(key uint32, p []byte) (uint64, error) {
	if key == amqp.BasicDeliverID {
		_, tag, _, _, _, err := amqp.PeekBasicDeliver(p)
		return tag, err
	}
	tag, _, _, _, _, err := amqp.PeekBasicGetOk(p)
	return tag, err
}

// heldConfirm records the broker's confirm and queues for the client what
// it releases (under mu, so confirms keep their order).
func (s *sessionState) heldConfirm(ch *channelState, seq uint64, multiple, nack bool) error {
	before := ch.unconfirmed.withheld
	ch.unconfirmed.brokerConfirm(ch.legSeq(seq), multiple, nack)
	s.withheld.Add(int64(ch.unconfirmed.withheld - before))
	s.releaseToClient(ch)
	return nil
}

func (s *sessionState) releaseToClient(ch *channelState) {
	if s.toClient == nil {
		return
	}
	s.toClient.build(func(b []byte) []byte { return s.release(b, ch) })
}

// clientContent tracks a content frame of a client's publish (its method
// was tracked before): a front stamps the header with the publish's front
// key, the master's core stamps its id and replicates the publish, and a
// confirm-mode channel keeps the frames for a replay. It reports whether
// to forward the frame (clientOut, when set, replaces it).
func (s *sessionState) clientContent(ch *channelState, f amqp.Frame) (bool, error) {
	logged := f.Raw
	stamped := false
	if f.Type == amqp.FrameHeader && s.stampFront && ch.confirm {
		var err error
		p := f.Payload
		key := frontKey()
		b, off := amqp.BeginFrame(s.frontOut[:0], amqp.FrameHeader, f.Channel)
		if b, err = amqp.AppendFrontStamp(b, p, key); err != nil {
			return false, err
		}
		s.frontOut = amqp.EndFrame(b, off)
		f.Raw, f.Payload = s.frontOut, s.frontOut[amqp.FrameHeaderSize:len(s.frontOut)-1]
		logged, stamped = f.Raw, true
		s.clientOut, s.clientRepl = f.Raw, true
	}
	fwd := true
	if s.repl != nil {
		if ch.r.dropping {
			fwd = false
			if ch.in.state == contentNone {
				ch.r.dropping = false
			}
		} else if f.Type == amqp.FrameHeader {
			out, err := s.replPublishHeader(ch, f, stamped || s.served)
			if err != nil {
				return false, err
			}
			if out == nil {
				fwd, s.clientRepl = false, false
			} else {
				s.clientOut, s.clientRepl = out, true
				if !stamped {
					logged = out
				}
			}
		} else if err := s.replPublishBody(ch, f); err != nil {
			return false, err
		}
	}
	if ch.confirm {
		s.pendingSize += ch.unconfirmed.add(logged, s.pendingSize+len(logged) <= s.maxPending)
	}
	return fwd, nil
}

// frontKey returns a new front key: random, so that keys of different
// sessions and nodes do not collide in any structured way (a false match
// would drop a new publish; with 64 random bits the odds are the number
// of keys sent again times the keys remembered, over 2^64); never 0.
func frontKey() uint64 {
	for {
		if k := rand.Uint64(); k != 0 {
			return k
		}
	}
}
