package proxy

import (
	"context"
	"errors"
	"net"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("proxy: server closed")

// Server accepts AMQP clients and carries each session to the upstream broker.
type Server struct {
	opts Options
}

// NewServer checks opts and returns a Server. It does not listen.
func NewServer(opts Options) (*Server, error) {
	return &Server{opts: opts}, nil
}

// Serve accepts clients on ln until Shutdown or Close. It always returns a
// non-nil error; after Shutdown or Close it is ErrServerClosed.
func (s *Server) Serve(ln net.Listener) error { return errors.New("TODO") }

// Shutdown stops accepting, lets sessions finish until ctx is done (or
// Options.ShutdownGrace, whichever comes first), then closes the rest with
// 320 CONNECTION_FORCED. It waits for every session goroutine to end.
func (s *Server) Shutdown(ctx context.Context) error { return errors.New("TODO") }

// Close closes the listeners and every session at once.
func (s *Server) Close() error { return errors.New("TODO") }
