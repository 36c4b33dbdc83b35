package group

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// forwarder carries clients of a mirror's sidecar to the master sidecar as
// raw TCP. Interim until the peer link exists (see the package comment).
// Goroutines: the accept loop (in Serve) and, per client, one that dials
// and copies client→master and one that copies master→client; Shutdown and
// Close stop and wait for them.
type forwarder struct {
	target      func() string // the master sidecar's client address
	dialTimeout time.Duration
	log         zerolog.Logger

	mu     sync.Mutex
	lns    map[net.Listener]bool
	conns  map[net.Conn]bool
	closed bool
	wg     sync.WaitGroup
}

func newForwarder(target func() string, dialTimeout time.Duration, log zerolog.Logger) *forwarder {
	return &forwarder{target: target, dialTimeout: dialTimeout, log: log,
		lns: map[net.Listener]bool{}, conns: map[net.Conn]bool{}}
}

// errForwarderClosed is Serve's result after Shutdown or Close.
var errForwarderClosed = errors.New("group: forwarder closed")

func (f *forwarder) serve(ln net.Listener) error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		ln.Close()
		return errForwarderClosed
	}
	f.lns[ln] = true
	f.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			f.mu.Lock()
			closed := f.closed
			delete(f.lns, ln)
			f.mu.Unlock()
			if closed {
				return errForwarderClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		if !f.track(c) {
			c.Close()
			return errForwarderClosed
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.forward(c)
		}()
	}
}

func (f *forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[c] = true
	return true
}

func (f *forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
	c.Close()
}

func (f *forwarder) forward(c net.Conn) {
	defer f.untrack(c)
	to := f.target()
	log := f.log.With().Str("client", c.RemoteAddr().String()).Str("master", to).Logger()
	d := net.Dialer{Timeout: f.dialTimeout}
	up, err := d.Dial("tcp", to)
	if err != nil {
		log.Warn().Err(err).Msg("cannot reach the master's sidecar; closing the client")
		return
	}
	if !f.track(up) {
		up.Close()
		return
	}
	defer f.untrack(up)
	log.Debug().Msg("client forwarded to the master's sidecar")
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(c, up) //nolint:errcheck // either side closing ends the session
		closeWrite(c)
	}()
	io.Copy(up, c) //nolint:errcheck
	closeWrite(up)
	<-done
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite() //nolint:errcheck
		return
	}
	c.Close()
}

// shutdown stops accepting and waits, until ctx ends, for forwarded
// sessions to finish; then closes the rest.
func (f *forwarder) shutdown(ctx context.Context) error {
	f.mu.Lock()
	f.closed = true
	for ln := range f.lns {
		ln.Close()
	}
	f.mu.Unlock()
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		f.close()
		<-done
		return ctx.Err()
	}
}

// close closes the listeners and every forwarded connection, and waits.
func (f *forwarder) close() {
	f.mu.Lock()
	f.closed = true
	for ln := range f.lns {
		ln.Close()
	}
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}
