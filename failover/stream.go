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
}

func newAuthStream(ln net.Listener, auth gm.AuthConfig, self string, log zerolog.Logger) *authStream {
	ctx, cancel := context.WithCancel(context.Background())
	s := &authStream{ln: ln, auth: auth, self: self, log: log, ready: make(chan net.Conn), ctx: ctx, stop: cancel}
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
			select {
			case s.ready <- conn:
			case <-s.ctx.Done():
				conn.Close()
			}
			_ = peer
		}()
	}
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
	return conn, err
}
