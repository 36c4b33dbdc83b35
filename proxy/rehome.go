package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// Moving a session (DESIGN invariant 5). With Options.Resume, a session
// whose leg ends — the broker side is lost (the master died or stepped
// down) — is not closed: the front opens a new leg through the server's
// current route and replays the session on it, while the client keeps its
// connection:
//
//   - the handshake with the client's own credentials, vhost and tune values;
//   - every open channel with its number, basic.qos, confirm.select;
//   - every consumer with its tag and arguments — except those declared
//     with x-cancel-on-ha-failover, which get basic.cancel (when the client
//     announced consumer_cancel_notify), as RabbitMQ did;
//   - delivery tags keep increasing: the channel's tagBase moves past the
//     last tag the client saw, and acks of older tags (the old broker's
//     deliveries, requeued there when the session left it) are dropped;
//   - unconfirmed publishes are sent again in order, with the front keys
//     they were first sent with: the new master drops, and confirms, those
//     it stored already (the old master's op reached it), so each is
//     stored once; the new broker's confirm numbers are mapped back to the
//     client's;
//   - a synchronous method the client was waiting on is sent again.
//
// A session that cannot move (an open transaction, unconfirmed publishes
// over the replay bound, a publish half sent outside confirm mode, or no
// master within ResumeTimeout) is closed with 320 and the reason.
//
// The upstream pump runs the move; the client pump parks before writing
// to the leg while a move runs (the frames it read are tracked, and the
// replay covers them); the heartbeat loop leaves the leg alone meanwhile.

// legState guards swapping the session's leg (up, ur, uout).
type legState struct {
	// frame is held (shared) by the client pump while it tracks and
	// queues one frame; a move takes it to start.
	frame  sync.RWMutex
	mu     sync.Mutex
	cond   *sync.Cond
	moving bool
	gen    uint64
}

// errNotMovable ends a session that cannot move.
type errNotMovable struct{ reason string }

func (e errNotMovable) Error() string {
	return "the session cannot move to the new master: " + e.reason
}

// resumable reports whether a lost leg is moved rather than the session
// closed.
func (s *session) resumable() bool {
	// A leg another front opened here is that front's to move.
	return s.srv.opts.Resume && !s.served && s.opened && !s.closing.Load() && !s.st.isClosing()
}

// legOut returns the leg's output and generation, waiting while a move runs.
func (s *session) legOut() (*out, uint64, bool) {
	s.leg.mu.Lock()
	defer s.leg.mu.Unlock()
	for s.leg.moving {
		select {
		case <-s.done:
			return s.uout, s.leg.gen, false
		default:
		}
		s.leg.cond.Wait()
	}
	return s.uout, s.leg.gen, true
}

// beginFrame waits until no move runs and takes the frame lock (the caller
// releases it); it returns the leg's output.
func (s *session) beginFrame() (*out, bool) {
	for {
		if _, _, ok := s.legOut(); !ok {
			return nil, false
		}
		s.leg.frame.RLock()
		s.leg.mu.Lock()
		moving, out := s.leg.moving, s.uout
		s.leg.mu.Unlock()
		if !moving {
			return out, true
		}
		s.leg.frame.RUnlock()
	}
}

// legLost is the client pump's news that writing to the leg of generation
// gen failed: the upstream pump moves the session (closing the leg wakes it
// if it does not know yet); the client pump waits for the next leg.
func (s *session) legLost(gen uint64) bool {
	s.leg.mu.Lock()
	up := s.up
	same := s.leg.gen == gen && !s.leg.moving
	s.leg.mu.Unlock()
	if same {
		up.Close()
	}
	s.leg.mu.Lock()
	defer s.leg.mu.Unlock()
	for s.leg.gen == gen {
		select {
		case <-s.done:
			return false
		default:
		}
		s.leg.cond.Wait()
	}
	return true
}

// wakeLeg wakes the pumps waiting on the leg (the session ends).
func (s *session) wakeLeg() {
	s.leg.mu.Lock()
	s.leg.cond.Broadcast()
	s.leg.mu.Unlock()
}

// rehome moves the session to a new leg; see the top of this file. It runs
// on the upstream pump. The error ends the session.
func (s *session) rehome(cause error) error {
	s.leg.frame.Lock() // no frame half tracked
	s.leg.mu.Lock()
	s.leg.moving = true
	old := s.up
	s.leg.mu.Unlock()
	s.leg.frame.Unlock()
	old.Close()
	s.log.Warn().Err(cause).Msg("the session's broker side was lost; moving the session to the master")

	if reason := s.st.movableForMove(); reason != "" {
		return &sessionError{kind: kindUpstreamGone, code: amqp.ConnectionForced, reason: "CONNECTION_FORCED - " + errNotMovable{reason}.Error(), err: cause}
	}
	deadline := time.Now().Add(s.srv.opts.ResumeTimeout)
	var lastErr error
	for attempt := 0; ; attempt++ {
		if time.Now().After(deadline) {
			return &sessionError{kind: kindUpstreamGone, code: amqp.ConnectionForced,
				reason: fmt.Sprintf("CONNECTION_FORCED - no master to move the session to within %v", s.srv.opts.ResumeTimeout), err: lastErr}
		}
		select {
		case <-s.done:
			return upstreamGone(cause)
		default:
		}
		if attempt > 0 {
			time.Sleep(min(50*time.Millisecond*time.Duration(attempt), 500*time.Millisecond))
		}
		err := s.replay()
		if err == nil {
			break
		}
		var nm errNotMovable
		if errors.As(err, &nm) {
			return &sessionError{kind: kindUpstreamGone, code: amqp.ConnectionForced, reason: "CONNECTION_FORCED - " + nm.Error(), err: cause}
		}
		lastErr = err
		s.log.Debug().Err(err).Int("attempt", attempt).Msg("moving the session: no leg yet")
	}
	s.leg.mu.Lock()
	s.leg.moving = false
	s.leg.gen++
	s.leg.cond.Broadcast()
	s.leg.mu.Unlock()
	s.srv.moved.Add(1)
	s.log.Info().Stringer("core", s.route.Core).Msg("session moved to the master; the client kept its connection")
	return s.cout.flush()
}

// movableForMove says why the session cannot move, "" when it can.
func (st *sessionState) movableForMove() string {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, ch := range st.channels {
		if ch == nil {
			continue
		}
		switch {
		case ch.tx:
			return "a transaction is open on channel " + itoa(int(ch.id))
		case ch.confirm && ch.unconfirmed.dropped:
			return "unconfirmed publishes on channel " + itoa(int(ch.id)) + " exceed the replay bound"
		case !ch.confirm && ch.in.state != contentNone:
			return "a publish was half sent on channel " + itoa(int(ch.id))
		}
	}
	return ""
}

// replay opens a leg through the server's current route and replays the
// session on it. On success the leg is the session's.
func (s *session) replay() error {
	route := *s.srv.route.Load()
	if route.Replicator != nil {
		// This node's core serves now: the leg is a session of our own
		// server (with the Replicator), reached in process.
		route.Core = loopCore{s.srv}
	}
	opts := &s.srv.opts
	ctx, cancel := context.WithTimeout(context.Background(), opts.HandshakeTimeout)
	defer cancel()
	c, err := route.Core.Open(ctx, s.client.RemoteAddr(), s.client.LocalAddr())
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	c.SetDeadline(time.Now().Add(opts.HandshakeTimeout))
	if _, err := c.Write(amqp.ProtocolHeader[:]); err != nil {
		return err
	}
	r := amqp.NewReader(c, opts.ReadBufferSize)
	r.SetMaxFrameSize(handshakeFrameMax)
	w := newOut(c, sendTimeout)
	rp := &replayer{s: s, r: r, w: w}

	// The handshake, as the client made it.
	if _, err := rp.expect(0, amqp.ConnectionStartID); err != nil {
		return err
	}
	st := s.st
	st.mu.Lock()
	startOk := amqp.ConnectionStartOk{ClientProperties: st.clientProperties, Mechanism: st.mechanism, Response: string(st.response), Locale: st.locale}
	up := st.upstream
	vhost := st.vhost
	st.mu.Unlock()
	if err := w.write(amqp.AppendMethodFrame(nil, 0, &startOk)); err != nil {
		return err
	}
	f, err := rp.expect(0, amqp.ConnectionTuneID)
	if err != nil {
		return err
	}
	m, err := amqp.DecodeMethod(f.Payload)
	if err != nil {
		return err
	}
	tune := m.(*amqp.ConnectionTune)
	tuneOk := amqp.ConnectionTuneOk{ChannelMax: up.channelMax, FrameMax: up.frameMax, Heartbeat: up.heartbeat}
	if tune.FrameMax != 0 && tune.FrameMax < tuneOk.FrameMax {
		return fmt.Errorf("the new broker's frame_max %d is below the session's %d", tune.FrameMax, tuneOk.FrameMax)
	}
	if tune.ChannelMax != 0 && (tuneOk.ChannelMax == 0 || tune.ChannelMax < tuneOk.ChannelMax) {
		return fmt.Errorf("the new broker's channel_max %d is below the session's %d", tune.ChannelMax, tuneOk.ChannelMax)
	}
	if err := w.write(amqp.AppendMethodFrame(nil, 0, &tuneOk)); err != nil {
		return err
	}
	r.SetMaxFrameSize(up.frameMax)
	if err := w.write(amqp.AppendMethodFrame(nil, 0, &amqp.ConnectionOpen{VirtualHost: vhost})); err != nil {
		return err
	}
	if _, err := rp.expect(0, amqp.ConnectionOpenOkID); err != nil {
		return err
	}

	// From here on the new leg carries the session: deliveries that
	// arrive while channels are replayed go to the client as usual.
	s.leg.mu.Lock()
	select {
	case <-s.done: // the session ended meanwhile: finish has the old leg
		s.leg.mu.Unlock()
		return errNotMovable{"the session ended"}
	default:
	}
	s.up, s.ur, s.uout = c, r, w
	s.route = route
	s.lapsed.Store(false)
	s.leg.mu.Unlock()
	ok = true
	c.SetDeadline(time.Now().Add(opts.HandshakeTimeout))
	defer c.SetDeadline(time.Time{})
	if err := rp.channels(); err != nil {
		c.Close() // the next attempt opens another leg
		return err
	}
	return nil
}

// channels replays every channel on the new leg (see the top of the file).
func (rp *replayer) channels() error {
	s, st := rp.s, rp.s.st
	st.mu.Lock()
	chans := make([]*channelState, 0, st.open)
	for _, ch := range st.channels {
		if ch != nil {
			chans = append(chans, ch)
			// Before anything is consumed on the new leg: its tags
			// follow the last one the client saw.
			ch.tagBase = ch.lastTag
		}
	}
	// Every channel moves together: the session's replicated state (the
	// master's core hooks) stays with the old leg.
	st.repl, st.redeliver = nil, nil
	s.gated.Store(false)
	// The old broker's close-oks for channels the client finished with
	// will not come.
	st.staleCloseOks = nil
	cancelNotify := st.caps.consumerCancelNotify
	st.mu.Unlock()

	for _, ch := range chans {
		st.mu.Lock()
		closing, answer := ch.closing(), st.leaveClosing(ch)
		st.mu.Unlock()
		if answer {
			s.cout.queue(amqp.AppendMethodFrame(nil, ch.id, &amqp.ChannelCloseOk{}))
		}
		if closing {
			continue
		}
		if err := rp.call(ch.id, &amqp.ChannelOpen{}, amqp.ChannelOpenOkID); err != nil {
			return err
		}
		st.mu.Lock()
		qos := amqp.BasicQos{PrefetchCount: ch.qosCount, PrefetchSize: ch.qosSize, Global: ch.qosGlobal}
		confirm := ch.confirm
		st.mu.Unlock()
		if qos.PrefetchCount != 0 || qos.PrefetchSize != 0 {
			if err := rp.call(ch.id, &qos, amqp.BasicQosOkID); err != nil {
				return err
			}
		}
		if confirm {
			if err := rp.call(ch.id, &amqp.ConfirmSelect{}, amqp.ConfirmSelectOkID); err != nil {
				return err
			}
		}
		st.mu.Lock()
		var consumers []*consumer
		for _, c := range ch.consumers {
			consumers = append(consumers, c)
		}
		st.mu.Unlock()
		for _, c := range consumers {
			if c.cancelOnFailover {
				st.mu.Lock()
				delete(ch.consumers, c.tag)
				st.mu.Unlock()
				if cancelNotify {
					s.cout.queue(amqp.AppendMethodFrame(nil, ch.id, &amqp.BasicCancel{ConsumerTag: c.tag, NoWait: true}))
					s.srv.cancels.Add(1)
				}
				continue
			}
			if err := rp.call(ch.id, &amqp.BasicConsume{Queue: c.queue, ConsumerTag: c.tag, NoLocal: c.noLocal,
				NoAck: c.noAck, Exclusive: c.exclusive, Arguments: c.args}, amqp.BasicConsumeOkID); err != nil {
				return err
			}
		}
	}

	// Tags, publishes in flight and the method the client waits on.
	var frames []byte
	st.mu.Lock()
	for _, ch := range chans {
		if st.channel(ch.id) != ch {
			continue
		}
		if ch.confirm {
			m := &seqMap{base: ch.nextSeq}
			ch.unconfirmed.each(func(seq uint64, b []byte) {
				s.srv.stats.resent.Add(1)
				m.replayed = append(m.replayed, seq)
				frames = append(frames, b...)
			})
			ch.seqs = m
		}
		if !ch.confirm && ch.in.state != contentNone {
			st.mu.Unlock()
			return errNotMovable{"a publish was half sent on channel " + itoa(int(ch.id))}
		}
		if len(ch.pending) > 0 {
			frames = append(frames, ch.pending...)
		}
		ch.r = replChannel{}
	}
	st.mu.Unlock()
	if len(frames) > 0 {
		if err := rp.w.write(frames); err != nil {
			return err
		}
	}
	return nil
}

// replayer reads and writes the new leg while a session moves.
type replayer struct {
	s *session
	r *amqp.Reader
	w *out
}

// call sends method on channel and waits for its answer, want, which is
// not passed to the client.
func (rp *replayer) call(channel uint16, m amqp.Method, want uint32) error {
	if err := rp.w.write(amqp.AppendMethodFrame(nil, channel, m)); err != nil {
		return err
	}
	_, err := rp.expect(channel, want)
	return err
}

// expect reads the leg until the method want arrives on channel; what else
// arrives (deliveries on channels already replayed) goes to the client as
// the upstream pump would send it. A channel or connection close instead
// of want fails the move.
func (rp *replayer) expect(channel uint16, want uint32) (amqp.Frame, error) {
	for {
		f, err := rp.r.ReadFrame()
		if err != nil {
			return f, err
		}
		if f.Type == amqp.FrameHeartbeat {
			continue
		}
		if f.Type == amqp.FrameMethod && f.Channel == channel {
			key, _ := amqp.MethodKey(f.Payload)
			if key == want {
				return f, nil
			}
			if key == amqp.ChannelCloseID {
				// The new master refuses this channel's state (an
				// exclusive queue that died with the old broker, say):
				// the session cannot move.
				reason := "refused"
				if m, err := amqp.DecodeMethod(f.Payload); err == nil {
					reason = m.(*amqp.ChannelClose).ReplyText
				}
				return f, errNotMovable{fmt.Sprintf("the new master refused %s on channel %d: %s", amqp.MethodName(want), channel, reason)}
			}
			if key == amqp.ConnectionCloseID {
				m, _ := amqp.DecodeMethod(f.Payload)
				return f, fmt.Errorf("the new leg refused the replay of %s: %v", amqp.MethodName(want), m)
			}
		}
		if f.Channel == 0 {
			return f, fmt.Errorf("unexpected %s on the new leg during the handshake", frameName(f))
		}
		fwd, err := rp.s.st.fromUpstream(f)
		if err != nil {
			return f, err
		}
		if fwd {
			if f.Type == amqp.FrameBody && uint32(len(f.Raw)) > rp.s.st.client.frameMax {
				rp.s.cout.build(func(b []byte) []byte { return rechunk(b, f, rp.s.st.client.frameMax) })
			} else {
				rp.s.cout.queue(f.Raw)
			}
		}
	}
}

func frameName(f amqp.Frame) string {
	if f.Type == amqp.FrameMethod {
		k, _ := amqp.MethodKey(f.Payload)
		return amqp.MethodName(k)
	}
	return fmt.Sprintf("frame type %d", f.Type)
}

// loopCore opens a leg as a session of the same server (with its current
// route's Replicator), in process: a front that moves to its own node's
// core keeps its place in front of it.
type loopCore struct{ srv *Server }

func (l loopCore) Open(_ context.Context, client, _ net.Addr) (net.Conn, error) {
	front, back := net.Pipe()
	if err := l.srv.ServeConn(carriedConn{Conn: back, remote: client}); err != nil {
		front.Close()
		return nil, err
	}
	return front, nil
}

func (l loopCore) String() string { return "this node's core (in process)" }

type carriedConn struct {
	net.Conn
	remote net.Addr
}

func (c carriedConn) RemoteAddr() net.Addr { return c.remote }
