package failover

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/gm"
)

// authStream is a raft.StreamLayer whose connections pass gm's peer
// handshake (purpose "raft") before raft sees a byte. Accepted connections
// are authenticated in their own goroutines so a slow or hostile peer never
// blocks the accept loop; Close stops and waits for all of them.
type authStream struct {
	ln    net.Listener
	auth  gm.AuthConfig
	self  string
	log   zerolog.Logger
	ready chan net.Conn
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{} // handed to raft; closed on Close so raft's readers end
	// refusedLogged: when a refused dial to each address was last logged
	// (guarded by mu; raft redials often, the log says it once in a while).
	refusedLogged map[raft.ServerAddress]time.Time
}

// refusedLogEvery bounds how often a peer refused on dialling is logged.
const refusedLogEvery = 10 * time.Second

func newAuthStream(ln net.Listener, auth gm.AuthConfig, self string, log zerolog.Logger) *authStream {
	ctx, cancel := context.WithCancel(context.Background())
	s := &authStream{ln: ln, auth: auth, self: self, log: log, ready: make(chan net.Conn), ctx: ctx, stop: cancel,
		conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.acceptLoop()
	}()
	return s
}

func (s *authStream) acceptLoop() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				s.log.Error().Err(err).Msg("raft accept failed")
			}
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			stop := context.AfterFunc(s.ctx, func() { c.Close() })
			conn, peer, err := gm.AuthAccept(c, s.auth, s.self, "raft")
			stop()
			if err != nil {
				s.log.Warn().Err(err).Str("remote", c.RemoteAddr().String()).Msg("raft peer refused")
				return
			}
			s.log.Debug().Str("peer", peer).Msg("raft peer authenticated")
			conn = s.track(conn)
			select {
			case s.ready <- conn:
			case <-s.ctx.Done():
				conn.Close()
			}
		}()
	}
}

// track registers c until it is closed and returns the conn to hand out.
func (s *authStream) track(c net.Conn) net.Conn {
	t := &trackedConn{Conn: c, s: s}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil { // stream closed
		c.Close()
		return t
	}
	s.conns[t] = struct{}{}
	return t
}

// trackedConn leaves the stream's set when closed, so the set stays bounded.
type trackedConn struct {
	net.Conn
	s *authStream
}

func (t *trackedConn) Close() error {
	t.s.mu.Lock()
	delete(t.s.conns, t)
	t.s.mu.Unlock()
	return t.Conn.Close()
}

// Accept implements net.Listener.
func (s *authStream) Accept() (net.Conn, error) {
	select {
	case c := <-s.ready:
		return c, nil
	case <-s.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener: it stops accepting and waits for the
// handshakes in progress.
func (s *authStream) Close() error {
	s.stop()
	err := s.ln.Close()
	s.wg.Wait()
	s.mu.Lock()
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	for c := range conns {
		c.(*trackedConn).Conn.Close()
	}
	// A barrier: a track or trackedConn.Close running now ends before Close returns.
	s.mu.Lock()
	s.mu.Unlock() //nolint:staticcheck // SA2001: the empty section is the barrier above
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Addr implements net.Listener.
func (s *authStream) Addr() net.Addr { return s.ln.Addr() }

// Dial implements raft.StreamLayer.
func (s *authStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", string(addr), timeout)
	if err != nil {
		return nil, err
	}
	conn, _, err := gm.AuthDial(c, s.auth, s.self, "raft")
	if err != nil {
		// A peer that fails authentication (its certificate, the secret)
		// is refused by this node as the dialling side too: say so, since
		// raft itself only logs at debug.
		if errors.Is(err, gm.ErrAuth) && s.shouldLogRefusal(addr) {
			s.log.Warn().Err(err).Str("remote", string(addr)).Msg("raft peer refused")
		}
		return nil, err
	}
	return s.track(conn), nil
}

// shouldLogRefusal reports whether a refused dial to addr is due a log line.
func (s *authStream) shouldLogRefusal(addr raft.ServerAddress) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refusedLogged == nil {
		s.refusedLogged = map[raft.ServerAddress]time.Time{}
	}
	if last, ok := s.refusedLogged[addr]; ok && time.Since(last) < refusedLogEvery {
		return false
	}
	s.refusedLogged[addr] = time.Now()
	return true
}
