package bench

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Hop is the bare TCP forwarder the proxy is compared with: it accepts a
// client, dials the upstream and copies bytes both ways until either side is
// done. It knows nothing of AMQP.
//
// With UserSpace false it uses io.Copy between the two *net.TCPConn, which on
// Linux moves the bytes with splice(2) and never copies them into the
// process. With UserSpace true it copies through a buffer in the process, as
// any proxy that reads frames must.
type Hop struct {
	upstream  string
	userSpace bool
	log       zerolog.Logger
	ln        net.Listener

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool

	wg sync.WaitGroup
}

// hopDialTimeout bounds dialling the upstream for one client.
const hopDialTimeout = 5 * time.Second

// hopBufferSize is the user-space copy buffer per direction.
const hopBufferSize = 64 << 10

// StartHop listens on 127.0.0.1:0 and forwards every client to upstream
// until Close.
func StartHop(upstream string, userSpace bool, log zerolog.Logger) (*Hop, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("bench: hop: listen: %w", err)
	}
	h := &Hop{
		upstream:  upstream,
		userSpace: userSpace,
		log:       log,
		ln:        ln,
		conns:     map[net.Conn]struct{}{},
	}
	h.wg.Add(1)
	go h.accept()
	return h, nil
}

// Addr is the address clients dial.
func (h *Hop) Addr() string { return h.ln.Addr().String() }

// Close stops accepting, closes every forwarded connection and waits for all
// of the hop's goroutines.
func (h *Hop) Close() error {
	h.mu.Lock()
	h.closed = true
	for c := range h.conns {
		_ = c.Close()
	}
	h.mu.Unlock()
	err := h.ln.Close()
	h.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (h *Hop) accept() {
	defer h.wg.Done()
	for {
		c, err := h.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				h.log.Error().Err(err).Msg("hop: accept failed; hop stops")
			}
			return
		}
		if !h.track(c) {
			_ = c.Close()
			return
		}
		h.wg.Add(1)
		go h.forward(c)
	}
}

// track records c so Close can close it; false once the hop is closed.
func (h *Hop) track(c net.Conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.conns[c] = struct{}{}
	return true
}

func (h *Hop) untrack(c net.Conn) {
	h.mu.Lock()
	delete(h.conns, c)
	h.mu.Unlock()
	_ = c.Close()
}

// forward owns one client: it dials the upstream in its own goroutine (never
// in the accept loop) and runs the two copy directions.
func (h *Hop) forward(client net.Conn) {
	defer h.wg.Done()
	defer h.untrack(client)

	d := net.Dialer{Timeout: hopDialTimeout}
	up, err := d.Dial("tcp", h.upstream)
	if err != nil {
		h.log.Error().Err(err).Str("upstream", h.upstream).Msg("hop: dial upstream failed")
		return
	}
	if !h.track(up) {
		_ = up.Close()
		return
	}
	defer h.untrack(up)

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); h.pipe(up, client) }()
	go func() { defer wg.Done(); h.pipe(client, up) }()
	wg.Wait()
}

// pipe copies src to dst. At a clean end of src it half-closes dst so the
// other direction can finish; on an error it closes both.
func (h *Hop) pipe(dst, src net.Conn) {
	var err error
	if h.userSpace {
		buf := make([]byte, hopBufferSize)
		_, err = io.CopyBuffer(onlyWriter{dst}, onlyReader{src}, buf)
	} else {
		_, err = io.Copy(dst, src)
	}
	if err == nil {
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			return
		}
	}
	_ = dst.Close()
	_ = src.Close()
}

// onlyReader and onlyWriter hide ReaderFrom/WriterTo so io.CopyBuffer really
// copies through the buffer instead of splicing.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

type onlyWriter struct{ w io.Writer }

func (o onlyWriter) Write(p []byte) (int, error) { return o.w.Write(p) }
