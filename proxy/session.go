package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// session is one client connection and its upstream broker connection. The
// front half (client side) and the core half (broker side) each have a pump
// goroutine that reads one connection, tracks what it reads in the shared
// sessionState and forwards it to the other connection's out.
type session struct {
	srv    *Server
	id     uint64
	route  Route // where the leg goes (fixed at the start, or by a move)
	served bool  // a leg another front opened here (ServeConn)
	log    zerolog.Logger
	client net.Conn
	cr     *amqp.Reader
	cout   *out
	up     net.Conn
	ur     *amqp.Reader
	uout   *out
	st     *sessionState

	// clientRead and upRead are set by the pumps on every frame and cleared
	// by the heartbeat loop, which closes a side silent for too long.
	clientRead atomic.Bool
	upRead     atomic.Bool

	// traffic counts the frames and bytes each pump read (stats.go).
	traffic sessionTraffic

	// closing is set once the proxy has decided to end the session: the
	// pumps then drop what they read, but for the client's close-ok.
	opened  bool // the handshake completed (set before the pumps start)
	closing atomic.Bool
	done    chan struct{} // closed when the pumps should stop
	force   chan string   // cap 1: CloseSessions' reason

	leg legState // moves of the leg (rehome.go)

	// gated: the leg is this node's master core with an Authority (set
	// at the handshake, cleared when the session moves off it); lapsed is
	// set once the authority failed and the leg was closed.
	gated  atomic.Bool
	lapsed atomic.Bool
}

// errAuthorityLost: this node stopped being the master while the session's
// leg was its core; what the broker sent the client meanwhile is dropped.
type errAuthorityLost struct{ err error }

func (e errAuthorityLost) Error() string {
	return "this node is no longer the master: " + e.err.Error()
}

func (e errAuthorityLost) Unwrap() error { return e.err }

// authorityGate is the client output's gate on a master core's session: a
// failed authority closes the leg (the session moves, or closes with 320)
// and fails the write.
func (s *session) authorityGate(auth func() error) func() error {
	return func() error {
		if !s.gated.Load() {
			return nil
		}
		err := auth()
		if err == nil {
			return nil
		}
		if !s.lapsed.Swap(true) {
			s.log.Warn().Err(err).Msg("this node may no longer confirm or deliver as the master: the session's broker side is closed, and what it sent is not passed on")
			s.leg.mu.Lock()
			up := s.up
			s.leg.mu.Unlock()
			if up != nil {
				up.Close()
			}
		}
		return errAuthorityLost{err}
	}
}

// forceClose asks the session to close with 320 and reason.
func (s *session) forceClose(reason string) {
	select {
	case s.force <- reason:
	default:
	}
}

// errKind says who failed and so what the session does about it.
type errKind uint8

const (
	kindClientGone       errKind = iota // the client's TCP connection ended or failed
	kindClientFault                     // the client broke the protocol
	kindUpstreamGone                    // the broker's TCP connection ended or failed
	kindUpstreamFault                   // the broker broke the protocol
	kindTimeout                         // handshake or heartbeat timeout on the client
	kindShutdown                        // the server is shutting down
	kindHandshakeRefused                // the client's handshake is refused as RabbitMQ refuses it: no close frame
)

type sessionError struct {
	kind   errKind
	code   uint16
	reason string
	err    error
}

func (e *sessionError) Error() string {
	if e.err != nil {
		return e.reason + ": " + e.err.Error()
	}
	return e.reason
}
func (e *sessionError) Unwrap() error { return e.err }

func clientGone(err error) error {
	return &sessionError{kind: kindClientGone, reason: "client connection lost", err: err}
}

func upstreamGone(err error) error {
	return &sessionError{kind: kindUpstreamGone, code: amqp.ConnectionForced, reason: "CONNECTION_FORCED - broker connection lost", err: err}
}

// clientFault makes a protocol error by the client from err (an
// *amqp.FrameError carries the reply code).
func (s *session) clientFault(err error) error {
	var fe *amqp.FrameError
	if errors.As(err, &fe) {
		return &sessionError{kind: kindClientFault, code: fe.Code, reason: replyText(fe.Code, fe.Reason)}
	}
	return &sessionError{kind: kindClientFault, code: amqp.InternalError, reason: "INTERNAL_ERROR - " + err.Error()}
}

func (s *session) upstreamFault(err error) error {
	return &sessionError{kind: kindUpstreamFault, code: amqp.ConnectionForced, reason: "CONNECTION_FORCED - broker protocol error", err: err}
}

// clientReadError classifies an error from reading the client.
func (s *session) clientReadError(err error) error {
	var fe *amqp.FrameError
	switch {
	case errors.As(err, &fe):
		return s.clientFault(err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return &sessionError{kind: kindTimeout, reason: "client timed out", err: err}
	}
	return clientGone(err)
}

// replyText prefixes reason with the reply code's name, as RabbitMQ does,
// unless it is there already.
func replyText(code uint16, reason string) string {
	name := replyNames[code]
	if name == "" || len(reason) >= len(name) && reason[:len(name)] == name {
		return reason
	}
	return name + " - " + reason
}

var replyNames = map[uint16]string{
	amqp.ConnectionForced: "CONNECTION_FORCED", amqp.FrameErrorCode: "FRAME_ERROR",
	amqp.SyntaxError: "SYNTAX_ERROR", amqp.CommandInvalid: "COMMAND_INVALID",
	amqp.ChannelError: "CHANNEL_ERROR", amqp.UnexpectedFrame: "UNEXPECTED_FRAME",
	amqp.ResourceError: "RESOURCE_ERROR", amqp.NotAllowed: "NOT_ALLOWED",
	amqp.NotImplemented: "NOT_IMPLEMENTED", amqp.InternalError: "INTERNAL_ERROR",
}

// serve runs the session to its end. It owns client and closes it.
func (s *session) serve(ctx context.Context) {
	defer s.client.Close()
	opts := &s.srv.opts
	s.client.SetDeadline(time.Now().Add(opts.HandshakeTimeout))
	s.cr = amqp.NewReader(s.client, opts.ReadBufferSize)
	// Writes go to the TCP socket itself: a PROXY-protocol wrapper would hide
	// its writev. Nothing is written before the first read consumed the header.
	s.cout = newOut(rawConn(s.client), sendTimeout)

	if _, err := s.cr.ReadProtocolHeader(); err != nil {
		if errors.Is(err, amqp.ErrBadProtocolHeader) {
			// As a broker does: answer with the header we speak and close.
			s.log.Warn().Msg("bad protocol header from client; answered with AMQP 0-9-1's")
			s.srv.stats.badInputSeen(BadInputProtocolHeader)
			_ = s.cout.write(amqp.ProtocolHeader[:])
			lingerClose(s.client)
			return
		}
		if errors.Is(err, ErrProxyHeader) {
			s.log.Warn().Err(err).Msg("refused a client connection: bad PROXY protocol header")
			s.srv.stats.badInputSeen(BadInputProxyHeader)
			return
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			s.log.Warn().Err(err).Msg("handshake timeout: no complete protocol header (or PROXY header) from the client")
			return
		}
		// Most often a readiness probe: a bare TCP connect, then gone.
		s.log.Debug().Err(err).Msg("client left before sending a protocol header")
		return
	}

	if err := s.dialUpstream(ctx); err != nil {
		s.refuseUnreachable(err)
		return
	}
	defer s.up.Close()

	if err := s.safely(s.handshake); err != nil {
		var se *sessionError
		if errors.As(err, &se) && se.kind == kindClientFault {
			// RabbitMQ answers any fault of the client's before the
			// connection is open by dropping it, after a delay, without
			// a close (rabbit_reader's handshake_error).
			se.kind = kindHandshakeRefused
		}
		if errors.As(err, &se) && se.kind == kindHandshakeRefused {
			s.log.Warn().Str("reason", se.reason).Msg("refused the client's handshake; dropping the connection without a close, as RabbitMQ does")
			t := time.NewTimer(silentCloseDelay)
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
		s.finish(err, false)
		return
	}
	s.opened = true
	s.client.SetDeadline(time.Time{})
	s.up.SetDeadline(time.Time{})
	s.log = s.log.With().Str("vhost", s.st.vhost).Logger()
	s.log.Debug().Uint32("frame_max", s.st.client.frameMax).Uint16("heartbeat", s.st.client.heartbeat).
		Uint32("upstream_frame_max", s.st.upstream.frameMax).Msg("session open")

	if r := s.route.Replicator; r != nil {
		if a := s.route.Authority; a != nil {
			s.cout.mu.Lock()
			s.cout.gate = s.authorityGate(a)
			s.cout.mu.Unlock()
			s.gated.Store(true)
		}
		s.st.mu.Lock()
		s.st.repl, s.st.toClient = r, s.cout
		if rd, ok := r.(Redeliverer); ok {
			s.st.redeliver = rd.MayHaveBeenDelivered
		}
		if dd, ok := r.(Deduper); ok && s.served {
			s.st.dedup = dd
		}
		s.st.mu.Unlock()
		cancel := r.Watch(func(t Ticket) {
			if s.st.onStable(t) {
				s.cout.flush()
			}
		})
		defer cancel()
	}

	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Add(3)
	go func() { defer wg.Done(); errc <- s.safely(s.clientPump) }()
	go func() { defer wg.Done(); errc <- s.safely(s.upstreamPump) }()
	go func() { defer wg.Done(); errc <- s.safely(s.heartbeats) }()
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		err = &sessionError{kind: kindShutdown, code: amqp.ConnectionForced, reason: "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"}
	case reason := <-s.force:
		err = &sessionError{kind: kindShutdown, code: amqp.ConnectionForced, reason: "CONNECTION_FORCED - " + reason}
	}
	s.finish(err, true)
	wg.Wait()
	// A pump that stopped on an error leaves its connection unread: drain
	// it until the deadline finish set, so the close frame is not reset away.
	s.leg.mu.Lock()
	up := s.up
	s.leg.mu.Unlock()
	for _, c := range []net.Conn{s.client, up} {
		_, _ = io.Copy(io.Discard, io.LimitReader(c, 1<<20)) // drain, bounded; its end is the close below
		c.Close()
	}
}

// safely runs fn and turns a panic into an error that ends this session
// only: one session's bug must not take the sidecar down.
func (s *session) safely(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error().Str("panic", fmt.Sprint(r)).Str("stack", string(debug.Stack())).Msg("session goroutine panicked")
			err = fmt.Errorf("internal error: %v", r)
		}
	}()
	return fn()
}

// sendTimeout bounds one write to a peer that does not read, as RabbitMQ's
// default tcp send_timeout does.
const sendTimeout = 15 * time.Second

// clientPump forwards the client's frames to the broker.
func (s *session) clientPump() error {
	var n pumpCount
	defer n.publish(&s.traffic.framesFromClient, &s.traffic.bytesFromClient)
	for {
		if !s.cr.HasFrame() {
			n.publish(&s.traffic.framesFromClient, &s.traffic.bytesFromClient)
			out, gen, ok := s.legOut()
			if !ok {
				return nil
			}
			if err := out.flush(); err != nil {
				if s.resumable() && s.legLost(gen) {
					continue
				}
				return upstreamGone(err)
			}
		}
		f, err := s.cr.ReadFrame()
		if err != nil {
			return s.clientReadError(err)
		}
		n.frames++
		n.bytes += uint64(len(f.Raw))
		s.clientRead.Store(true)
		if s.closing.Load() {
			if isCloseOk(f) {
				s.client.Close() // the close handshake is complete
				return nil
			}
			continue
		}
		// A frame is tracked and queued on one leg as a whole: a move
		// starts between frames, so what was tracked before it is in the
		// replay and what comes after goes to the new leg.
		out, ok := s.beginFrame()
		if !ok {
			return nil
		}
		err = s.forwardFromClient(f, out)
		s.leg.frame.RUnlock()
		if err != nil {
			return err
		}
	}
}

// forwardFromClient tracks one client frame and queues it on out.
func (s *session) forwardFromClient(f amqp.Frame, out *out) error {
	fwd, err := s.st.fromClient(f)
	if err != nil {
		return s.clientFault(err)
	}
	if s.st.flushClient {
		s.st.flushClient = false
		if err := s.cout.flush(); err != nil {
			return err
		}
	}
	if !fwd {
		return nil
	}
	if s.st.clientRepl {
		s.st.clientRepl = false
		out.build(func(b []byte) []byte { return append(b, s.st.clientOut...) })
		return nil
	}
	if f.Type == amqp.FrameBody && uint32(len(f.Raw)) > s.st.upstream.frameMax {
		out.build(func(b []byte) []byte { return rechunk(b, f, s.st.upstream.frameMax) })
		return nil
	}
	out.queue(f.Raw)
	return nil
}

// upstreamPump forwards the broker's frames to the client.
func (s *session) upstreamPump() error {
	var n pumpCount
	defer n.publish(&s.traffic.framesToClient, &s.traffic.bytesToClient)
	for {
		if !s.ur.HasFrame() {
			n.publish(&s.traffic.framesToClient, &s.traffic.bytesToClient)
			if err := s.cout.flush(); err != nil {
				var lost errAuthorityLost
				if !errors.As(err, &lost) {
					return clientGone(err)
				}
				// The leg is closed: the next read fails, and the session
				// moves (or closes with 320) as for a lost broker.
			}
		}
		f, err := s.ur.ReadFrame()
		if err != nil {
			var fe *amqp.FrameError
			if errors.As(err, &fe) {
				return s.upstreamFault(err)
			}
			if s.st.isClosing() && connEnded(err) {
				// The broker ended the connection after a connection.close
				// (either side's). A reset is such an end: RabbitMQ closes
				// its socket after its own close even when the client's
				// close crossed it and is still unread.
				return nil
			}
			if s.resumable() {
				if err := s.rehome(err); err != nil {
					return err
				}
				continue
			}
			if s.lapsed.Load() {
				return &sessionError{kind: kindUpstreamGone, code: amqp.ConnectionForced,
					reason: "CONNECTION_FORCED - this node is no longer the master", err: err}
			}
			return upstreamGone(err)
		}
		n.frames++
		n.bytes += uint64(len(f.Raw))
		s.upRead.Store(true)
		if s.closing.Load() || s.lapsed.Load() {
			// Closing; or the leg is closed for a lost authority, and what
			// its reader still holds must not reach the client.
			continue
		}
		if s.resumable() && isForcedClose(f) {
			// The master stepped down (or its broker stops): move rather
			// than pass the close on.
			_ = s.uout.write(amqp.AppendMethodFrame(nil, 0, &amqp.ConnectionCloseOk{}))
			if err := s.rehome(errors.New("the master closed the session's broker side with 320")); err != nil {
				return err
			}
			continue
		}
		fwd, err := s.st.fromUpstream(f)
		if err != nil {
			return s.upstreamFault(err)
		}
		if !fwd {
			continue
		}
		if s.st.upRepl {
			// The delivery's header, stripped in place: still in the
			// reader's buffer, so it is queued like any frame — unless
			// the held method frame goes with it (a buffer of the
			// channel's, reused by the next delivery): copied then.
			s.st.upRepl = false
			if s.st.upCopy {
				s.st.upCopy = false
				out := s.st.upOut
				s.cout.build(func(b []byte) []byte { return append(b, out...) })
				continue
			}
			f.Raw = s.st.upOut
		}
		if f.Type == amqp.FrameBody && uint32(len(f.Raw)) > s.st.client.frameMax {
			s.cout.build(func(b []byte) []byte { return rechunk(b, f, s.st.client.frameMax) })
			continue
		}
		s.cout.queue(f.Raw)
	}
}

// rechunk appends f's body split into frames of at most frameMax octets.
func rechunk(dst []byte, f amqp.Frame, frameMax uint32) []byte {
	n := int(frameMax) - amqp.FrameOverhead
	for p := f.Payload; len(p) > 0; {
		k := min(n, len(p))
		dst = amqp.AppendFrame(dst, amqp.FrameBody, f.Channel, p[:k])
		p = p[k:]
	}
	return dst
}

// isForcedClose: a connection.close with 320 CONNECTION_FORCED.
func isForcedClose(f amqp.Frame) bool {
	if f.Type != amqp.FrameMethod || f.Channel != 0 {
		return false
	}
	if k, _ := amqp.MethodKey(f.Payload); k != amqp.ConnectionCloseID {
		return false
	}
	m, err := amqp.DecodeMethod(f.Payload)
	if err != nil {
		return false
	}
	return m.(*amqp.ConnectionClose).ReplyCode == amqp.ConnectionForced
}

func isCloseOk(f amqp.Frame) bool {
	if f.Type != amqp.FrameMethod || f.Channel != 0 {
		return false
	}
	k, _ := amqp.MethodKey(f.Payload)
	return k == amqp.ConnectionCloseOkID
}

// heartbeats sends heartbeats to each side that has been idle for half its
// interval, and ends the session when a side has been silent for two.
func (s *session) heartbeats() error {
	chb := time.Duration(s.st.client.heartbeat) * time.Second
	uhb := time.Duration(s.st.upstream.heartbeat) * time.Second
	if chb == 0 && uhb == 0 {
		<-s.done
		return nil
	}
	tick := time.Second
	for _, hb := range []time.Duration{chb, uhb} {
		if hb > 0 && hb/2 < tick {
			tick = hb / 2
		}
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	var cIdleSend, uIdleSend, cIdleRecv, uIdleRecv time.Duration
	for {
		select {
		case <-s.done:
			return nil
		case <-t.C:
		}
		if chb > 0 {
			if s.cout.wrote.Swap(false) {
				cIdleSend = 0
			} else if cIdleSend += tick; cIdleSend >= chb/2 {
				if err := s.cout.writeUngated(amqp.HeartbeatFrame); err != nil {
					return clientGone(err)
				}
				cIdleSend = 0
			}
			if s.clientRead.Swap(false) {
				cIdleRecv = 0
			} else if cIdleRecv += tick; cIdleRecv >= 2*chb {
				return &sessionError{kind: kindTimeout, reason: fmt.Sprintf("missed heartbeats from client, timeout: %ds", chb/time.Second)}
			}
		}
		s.leg.mu.Lock()
		moving, uout := s.leg.moving, s.uout
		s.leg.mu.Unlock()
		if moving {
			// The client pump is parked and the leg is being replaced:
			// neither side's silence counts.
			cIdleRecv, uIdleSend, uIdleRecv = 0, 0, 0
			continue
		}
		if uhb > 0 {
			if uout.wrote.Swap(false) {
				uIdleSend = 0
			} else if uIdleSend += tick; uIdleSend >= uhb/2 {
				if err := uout.write(amqp.HeartbeatFrame); err != nil {
					if s.resumable() {
						continue // the upstream pump moves the session
					}
					return upstreamGone(err)
				}
				uIdleSend = 0
			}
			if s.upRead.Swap(false) {
				uIdleRecv = 0
			} else if uIdleRecv += tick; uIdleRecv >= 2*uhb {
				if s.resumable() {
					s.leg.mu.Lock()
					up := s.up
					s.leg.mu.Unlock()
					up.Close() // the upstream pump notices, and moves the session
					uIdleRecv = 0
					continue
				}
				return upstreamGone(fmt.Errorf("missed heartbeats from broker, timeout: %ds", uhb/time.Second))
			}
		}
	}
}

// finish ends the session for err: one log line, the close each side should
// see, and read deadlines that bound how long the pumps (when running) wait
// for the peers' close-ok. With the pumps not running it drains and closes
// the connections itself. It is called once, by serve.
func (s *session) finish(err error, pumping bool) {
	s.closing.Store(true)
	close(s.done)
	s.wakeLeg()
	// A move in progress swaps the leg under leg.mu, and gives up once
	// done is closed: from here on s.up stays.
	s.leg.mu.Lock()
	up, uout := s.up, s.uout
	s.leg.mu.Unlock()
	clientCode, clientReason := uint16(0), ""
	upstreamClose := false // send connection.close 200 upstream
	hardClient, hardUpstream := false, false
	var se *sessionError
	switch {
	case err == nil:
		// A pump ended at a normal close: nothing more to say to anyone.
		hardClient, hardUpstream = true, true
	case errors.Is(err, errHandshakeClosed):
		hardClient, hardUpstream = false, false
	case !errors.As(err, &se):
		s.log.Error().Err(err).Msg("session ended")
		clientCode, clientReason = amqp.InternalError, "INTERNAL_ERROR - "+err.Error()
		upstreamClose = true
	case se.kind == kindClientGone:
		if s.st.isClosing() || isEOF(se.err) {
			s.log.Debug().Msg("client closed the connection")
		} else {
			s.log.Info().Err(se.err).Msg("client connection lost")
		}
		// Mirror what the client did: the broker sees its connection end.
		hardClient, hardUpstream = true, true
	case se.kind == kindTimeout:
		s.log.Warn().Err(se.err).Msg(se.reason)
		hardClient, upstreamClose = true, true
	case se.kind == kindHandshakeRefused:
		hardClient, hardUpstream = true, true // logged by serve
		s.srv.stats.badInputSeen(badInputKey(se.code))
	case se.kind == kindClientFault:
		s.log.Warn().Uint16("code", se.code).Str("reason", se.reason).Msg("closing client connection: protocol error")
		s.srv.stats.badInputSeen(badInputKey(se.code))
		clientCode, clientReason, upstreamClose = se.code, se.reason, true
	case se.kind == kindUpstreamGone && !s.opened:
		// During the handshake the broker ends a connection it refuses
		// (bad credentials, for a client without authentication_failure_close)
		// by dropping it; clients rely on exactly that (amqp091-go reports
		// ErrCredentials), so do the same to the client.
		s.log.Warn().Err(se.err).Msg("the broker dropped the connection during the handshake (refused credentials?); dropping the client's")
		hardClient, hardUpstream = true, true
	case se.kind == kindUpstreamGone, se.kind == kindUpstreamFault:
		if s.st.isClosing() && connEnded(se.err) {
			hardClient, hardUpstream = true, true
			break
		}
		s.log.Warn().Err(se.err).Msg("broker connection failed; closing the client with 320")
		clientCode, clientReason, hardUpstream = se.code, se.reason, true
	case se.kind == kindShutdown:
		s.log.Info().Msg("closing session: shutdown")
		clientCode, clientReason, upstreamClose = se.code, se.reason, true
	}

	deadline := time.Now().Add(lingerTimeout)
	if clientCode != 0 {
		frame := amqp.AppendMethodFrame(nil, 0, &amqp.ConnectionClose{ReplyCode: clientCode, ReplyText: amqp.TruncateShortstr(clientReason)})
		if s.cout.writeUngated(frame) != nil {
			hardClient = true
		}
	}
	if up != nil && upstreamClose && !s.st.isClosing() {
		frame := amqp.AppendMethodFrame(nil, 0, &amqp.ConnectionClose{ReplyCode: amqp.ReplySuccess, ReplyText: amqp.TruncateShortstr("closed by mirrorproxy: " + closeCause(se))})
		if uout.write(frame) != nil {
			hardUpstream = true
		}
	}
	end := func(c net.Conn, hard bool) {
		if c == nil {
			return
		}
		if hard {
			c.Close()
			return
		}
		halfClose(c)
		c.SetReadDeadline(deadline)
		if !pumping {
			_, _ = io.Copy(io.Discard, io.LimitReader(c, 1<<20)) // drain, bounded; its end is the close below
			c.Close()
		}
	}
	end(s.client, hardClient)
	end(up, hardUpstream)
}

func closeCause(se *sessionError) string {
	if se == nil {
		return "internal error"
	}
	switch se.kind {
	case kindTimeout:
		return se.reason
	case kindShutdown:
		return "shutdown"
	}
	return "client protocol error: " + se.reason
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF)
}

// connEnded: the peer ended the connection, cleanly or with a reset (a
// peer that closes with unread input resets it), or it was closed here.
func connEnded(err error) bool {
	return isEOF(err) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// lingerTimeout bounds waiting for a peer to read our close and go.
const lingerTimeout = 2 * time.Second

// halfClose sends FIN so that a peer that reads our close frame then sees the
// end of the stream; reading on goes on until the peer closes, so that unread
// input does not make the kernel reset the connection and lose the close frame.
func halfClose(c net.Conn) {
	c = rawConn(c)
	type closeWriter interface{ CloseWrite() error }
	if cw, ok := c.(closeWriter); ok {
		_ = cw.CloseWrite() // fails only on a closed connection: nothing left to half-close
	}
}

// lingerClose half-closes c, drains it until the peer closes or the timeout,
// and closes it.
func lingerClose(c net.Conn) {
	halfClose(c)
	c.SetReadDeadline(time.Now().Add(lingerTimeout))
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 1<<20)) // drain, bounded; its end is the close below
	c.Close()
}

// rawConn is the TCP connection under a PROXY-protocol wrapper, or c.
func rawConn(c net.Conn) net.Conn {
	if r, ok := c.(interface{ Raw() net.Conn }); ok {
		return r.Raw()
	}
	return c
}
