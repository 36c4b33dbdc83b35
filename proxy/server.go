package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("proxy: server closed")

// Server accepts AMQP clients and carries each session to the upstream broker.
//
// Lock order: Server.mu is never held while taking a session's locks.
type Server struct {
	opts Options
	log  zerolog.Logger

	// ctx is cancelled by Shutdown after the grace period (or by Close): every
	// session then closes with 320.
	ctx    context.Context
	cancel context.CancelFunc

	// route is where new sessions go: their core and, on the master, the
	// Replicator. SetRoute changes it for sessions opened afterwards.
	route atomic.Pointer[Route]

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	closed    bool
	sessions  sync.WaitGroup
	active    atomic.Int64
	nextID    atomic.Uint64
	moved     atomic.Int64        // sessions moved to a new leg (Options.Resume)
	cancels   atomic.Int64        // basic.cancel sent for x-cancel-on-ha-failover consumers
	deduped   atomic.Int64        // re-sent publishes dropped as stored already
	live      map[uint64]*session // for Outstanding and Stats; guarded by mu
	stats     serverStats         // stats.go
}

// NewServer checks opts and returns a Server. It does not listen.
func NewServer(opts Options) (*Server, error) {
	if opts.Upstream == "" && opts.Core == nil {
		return nil, errors.New("proxy: Options.Upstream is empty: give the broker's host:port")
	}
	if opts.Core == nil {
		if _, _, err := net.SplitHostPort(opts.Upstream); err != nil {
			return nil, fmt.Errorf("proxy: Options.Upstream %q: %w", opts.Upstream, err)
		}
	}
	d := DefaultOptions
	setDefault(&opts.DialTimeout, d.DialTimeout)
	setDefault(&opts.HandshakeTimeout, d.HandshakeTimeout)
	setDefault(&opts.Heartbeat, d.Heartbeat)
	setDefault(&opts.UpstreamHeartbeat, d.UpstreamHeartbeat)
	setDefault(&opts.FrameMax, d.FrameMax)
	setDefault(&opts.MaxUnconfirmed, d.MaxUnconfirmed)
	setDefault(&opts.ReadBufferSize, d.ReadBufferSize)
	setDefault(&opts.ProxyProtocol, d.ProxyProtocol)
	setDefault(&opts.ProxyHeaderTimeout, d.ProxyHeaderTimeout)
	setDefault(&opts.ShutdownGrace, d.ShutdownGrace)
	setDefault(&opts.ResumeTimeout, d.ResumeTimeout)
	if opts.FrameMax < 4096 {
		return nil, fmt.Errorf("proxy: Options.FrameMax %d is below AMQP's minimum 4096", opts.FrameMax)
	}
	if err := validateProxyProtocol(opts); err != nil {
		return nil, err
	}
	switch opts.SendProxyProtocol {
	case "", "v1", "v2":
	default:
		return nil, fmt.Errorf("proxy: Options.SendProxyProtocol %q: want \"\", v1 or v2", opts.SendProxyProtocol)
	}
	if opts.Core == nil {
		opts.Core = BrokerCore{Addr: opts.Upstream, DialTimeout: opts.DialTimeout, SendProxyProtocol: opts.SendProxyProtocol, TLS: opts.UpstreamTLS}
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		opts:      opts,
		log:       opts.Logger,
		ctx:       ctx,
		cancel:    cancel,
		listeners: make(map[net.Listener]struct{}),
		live:      make(map[uint64]*session),
	}
	s.route.Store(&Route{Core: opts.Core, Replicator: opts.Replicator})
	return s, nil
}

// Route is where a session goes: the core that opens its leg and, when
// this sidecar is the master's core, the Replicator of its publishes.
type Route struct {
	Core       Core
	Replicator Replicator
	// Authority, with a Replicator, is asked before the core's sessions
	// send clients anything their broker said (deliveries, confirms,
	// replies): nil while this node may serve as the master; an error
	// (its lease lapsed, a newer view names another master) ends the
	// session's leg, and nothing queued for the client goes out. It may
	// block briefly while the node re-establishes its lease (after a
	// freeze of the process, say).
	Authority func() error
}

// SetRoute sends the sessions opened from now on along r (a node that
// becomes master serves them with its own broker and Replicator; one that
// stops being master sends them to the new one). Sessions already open
// keep theirs. A nil Core keeps the current one.
func (s *Server) SetRoute(r Route) {
	if r.Core == nil {
		r.Core = s.route.Load().Core
	}
	s.route.Store(&r)
}

// DropLegs ends the broker side of every session, for a master that stops
// serving: a client's session (with Options.Resume) moves to the master
// its route names next; a leg another front opened here (ServeConn) is
// closed, so that front moves its session. It returns how many it dropped.
func (s *Server) DropLegs() int {
	s.mu.Lock()
	live := make([]*session, 0, len(s.live))
	for _, sess := range s.live {
		live = append(live, sess)
	}
	s.mu.Unlock()
	for _, sess := range live {
		if sess.served {
			sess.client.Close()
			continue
		}
		sess.leg.mu.Lock()
		up := sess.up
		sess.leg.mu.Unlock()
		if up != nil {
			up.Close()
		}
	}
	return len(live)
}

// DropRemoteLegs ends the broker side of every client session whose leg
// does not go to this server's own core (a peer link to another sidecar,
// or a plain upstream without a Replicator): a front whose master changed
// lets those sessions move (with Options.Resume) or close with 320, so
// that a client is not left waiting on a master that froze or was
// replaced. Legs other fronts opened here and legs to the local core are
// kept. It returns how many it dropped.
func (s *Server) DropRemoteLegs() int {
	s.mu.Lock()
	live := make([]*session, 0, len(s.live))
	for _, sess := range s.live {
		live = append(live, sess)
	}
	s.mu.Unlock()
	n := 0
	for _, sess := range live {
		if sess.served {
			continue
		}
		sess.leg.mu.Lock()
		up, local := sess.up, sess.route.Replicator != nil
		sess.leg.mu.Unlock()
		if up != nil && !local {
			up.Close()
			n++
		}
	}
	return n
}

// CloseSessions closes every open session with 320 CONNECTION_FORCED and
// reason (a fenced master's), and waits for nothing: each ends on its own
// goroutine. The server keeps accepting.
func (s *Server) CloseSessions(reason string) int {
	s.mu.Lock()
	live := make([]*session, 0, len(s.live))
	for _, sess := range s.live {
		live = append(live, sess)
	}
	s.mu.Unlock()
	for _, sess := range live {
		sess.forceClose(reason)
	}
	return len(live)
}

func setDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

// Outstanding returns the ids of the messages of a queue that the core
// delivered to clients and that are not settled yet (replication on).
// A sync waits for them: a mirror can only get them once they are back in
// the queue.
func (s *Server) Outstanding(vhost, queue string) []uint64 {
	s.mu.Lock()
	live := make([]*session, 0, len(s.live))
	for _, sess := range s.live {
		live = append(live, sess)
	}
	s.mu.Unlock()
	var ids []uint64
	for _, sess := range live {
		ids = sess.st.outstanding(vhost, queue, ids)
	}
	return ids
}

// Moved reports how many times a session moved to a new leg, and how many
// basic.cancel were sent to x-cancel-on-ha-failover consumers then.
func (s *Server) Moved() (moves, cancels int64) { return s.moved.Load(), s.cancels.Load() }

// Deduplicated reports how many publishes that moved sessions sent again
// were dropped here because this node had stored them already.
func (s *Server) Deduplicated() int64 { return s.deduped.Load() }

// Sessions reports how many client sessions are open.
func (s *Server) Sessions() int { return int(s.active.Load()) }

// Serve accepts clients on ln until Shutdown or Close. It always returns a
// non-nil error; after Shutdown or Close it is ErrServerClosed. The accept
// loop never blocks on a client: PROXY headers are read, and the broker
// dialled, in the session's own goroutine.
func (s *Server) Serve(ln net.Listener) error { return s.serve(ln, nil) }

// serve is Serve, with each client's TLS handshake first when tlsCfg is
// set (ServeTLS).
func (s *Server) serve(ln net.Listener, tlsCfg *tls.Config) error {
	ln = wrapProxyListener(ln, s.opts)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()

	s.log.Info().Str("listen", ln.Addr().String()).Stringer("core", s.route.Load().Core).Bool("tls", tlsCfg != nil).Msg("accepting AMQP clients")
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosed() || errors.Is(err, net.ErrClosed) {
				return ErrServerClosed
			}
			// Out of descriptors, a connection the PROXY policy refused, a bad
			// header: log it and keep accepting, backing off while it lasts.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn().Err(err).Dur("retry_in", backoff).Msg("accept failed")
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		s.startSession(c, false, tlsCfg)
	}
}

// ServeConn serves one client connection accepted elsewhere — a session's
// leg from another sidecar's front over the peer link — until it ends. c's
// RemoteAddr is the client's own address (the peer link carries it). No
// PROXY header is read. After Shutdown or Close it closes c and returns
// ErrServerClosed.
func (s *Server) ServeConn(c net.Conn) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return ErrServerClosed
	}
	s.sessions.Add(1) // under mu: never after Shutdown started waiting
	s.mu.Unlock()
	s.startSession(c, true, nil)
	return nil
}

func (s *Server) startSession(c net.Conn, counted bool, tlsCfg *tls.Config) {
	if tc, ok := rawConn(c).(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	var tc *tls.Conn
	if tlsCfg != nil {
		tc = tls.Server(c, tlsCfg) // no I/O yet: the handshake runs in the session's goroutine
		c = tc
	}
	id := s.nextID.Add(1)
	sess := &session{
		srv:   s,
		id:    id,
		route: *s.route.Load(),
		st:    newSessionState(s.opts.MaxUnconfirmed),
		done:  make(chan struct{}),
		force: make(chan string, 1),
	}
	sess.leg.cond = sync.NewCond(&sess.leg.mu)
	sess.client = c
	sess.served = counted
	sess.st.served, sess.st.deduped = counted, &s.deduped
	if s.opts.Resume && !counted {
		// This session may move: its publishes carry front keys.
		sess.st.stampFront = true
	}
	if !counted {
		s.sessions.Add(1)
		s.stats.clientsTotal.Add(1)
	} else {
		s.stats.legsTotal.Add(1)
	}
	s.active.Add(1)
	s.mu.Lock()
	s.live[id] = sess
	s.mu.Unlock()
	go func() {
		defer s.sessions.Done()
		defer s.active.Add(-1)
		defer func() {
			s.mu.Lock()
			delete(s.live, id)
			s.sessionEnded(sess)
			s.mu.Unlock()
		}()
		// RemoteAddr of a PROXY-protocol connection reads the header: do it
		// here, under the header timeout, not in the accept loop.
		sess.log = s.log.With().Uint64("session", id).Str("client", clientAddr(c)).Logger()
		if tc != nil && !sess.tlsHandshake(s.ctx, tc) {
			return
		}
		sess.serve(s.ctx)
	}()
}

// clientAddr is the client's address, or the reason there is none.
func clientAddr(c net.Conn) (addr string) {
	defer func() {
		if recover() != nil {
			addr = "unknown"
		}
	}()
	if a := c.RemoteAddr(); a != nil {
		return a.String()
	}
	return "unknown"
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// closeListeners stops accepting. It reports whether the server was open.
func (s *Server) closeListeners() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	was := !s.closed
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	return was
}

// Shutdown stops accepting, lets sessions finish until ctx is done (or
// Options.ShutdownGrace, whichever comes first), then closes the rest with
// 320 CONNECTION_FORCED. It waits for every session goroutine to end.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeListeners()
	ctx, cancel := context.WithTimeout(ctx, s.opts.ShutdownGrace)
	defer cancel()
	done := make(chan struct{})
	go func() {
		s.sessions.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
	}
	n := s.Sessions()
	s.log.Info().Int("sessions", n).Msg("shutdown grace over; closing the remaining sessions with 320")
	s.cancel()
	<-done
	return nil
}

// Close closes the listeners and every session at once (with 320).
func (s *Server) Close() error {
	s.closeListeners()
	s.cancel()
	s.sessions.Wait()
	return nil
}
