package admin

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/rs/zerolog"
)

// Server serves the API on one listener. Its one goroutine runs from
// Start until Close returns.
type Server struct {
	srv    *http.Server
	cancel context.CancelFunc // ends the requests' contexts
	done   chan struct{}
	err    error // Serve's result, set before done closes
}

// Start serves h on ln until Close.
func Start(ln net.Listener, h http.Handler, log zerolog.Logger) *Server {
	base, cancel := context.WithCancel(context.Background())
	s := &Server{
		srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
			WriteTimeout: 60 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10,
			BaseContext: func(net.Listener) context.Context { return base }},
		cancel: cancel,
		done:   make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Str("listen", ln.Addr().String()).Msg("admin API stopped")
			s.err = err
		}
	}()
	return s
}

// Close stops accepting and ends the contexts of the requests in progress
// (a sync_queue stops waiting for its sync and answers), lets them finish
// until ctx ends, then closes the rest and waits for the server's
// goroutine. It returns the server's own failure, if it had one.
func (s *Server) Close(ctx context.Context) error {
	s.cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, s.srv.Close())
	}
	<-s.done
	return errors.Join(err, s.err)
}
