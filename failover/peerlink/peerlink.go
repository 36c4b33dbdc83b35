// Package peerlink carries client sessions between sidecars (DESIGN §4): a
// front on any sidecar keeps the client's connection and opens the
// session's leg on the master's sidecar, whose proxy server serves it as a
// client of its own.
//
// One link joins a pair of sidecars: a TCP connection to the peer's ring
// address that passes gm's peer handshake with the purpose "peer" (the
// same secret or TLS as the gm and raft links: nobody gets in sideways), so
// the ring's listener takes it and hands it here (gm.NodeConfig.Handoff).
// Sessions are multiplexed on the link with hashicorp/yamux, one stream per
// session, each opened by the front's side and starting with a preamble:
//
//	kind(1) = 1 | len(2, big endian) | client address (host:port)
//
// after which the stream carries the session's AMQP bytes from the
// protocol header on. A stream of kind 2 carries one request and its
// answer instead (a membership change for the raft leader):
//
//	kind(1) = 2 | len(4) | request   ◀▶   status(1): 0 ok, 1 error | len(4) | answer or error text yamux's per-stream windows bound what a link buffers
//
// (DESIGN invariant 8); its keep-alives notice a dead link.
package peerlink

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/gm"
)

// Purpose is the peer handshake's purpose for session links.
const Purpose = "peer"

const (
	preambleVersion = 1 // a session stream
	kindRequest     = 2 // a request stream
	maxAddrLen      = 1024
	maxRequest      = 1 << 20
)

// Errors.
var (
	// ErrClosed is returned by Open after Close.
	ErrClosed = errors.New("peerlink: closed")
	// ErrBadPreamble means a stream did not start with a valid preamble.
	ErrBadPreamble = errors.New("peerlink: bad stream preamble")
)

// Config configures a Dialer.
type Config struct {
	// Self is this sidecar's node ID (its peer handshake identity).
	Self string
	// Auth authenticates both ends (gm's peer handshake).
	Auth gm.AuthConfig
	// Resolve maps a peer's node ID to its ring address ("" if unknown).
	Resolve func(id string) string
	// DialTimeout bounds connecting and authenticating (default 2s).
	DialTimeout time.Duration
	// KeepAlive is the interval of yamux pings on an idle link
	// (default 1s); a link whose writes stall for WriteTimeout (default
	// 5s) is closed with every session on it.
	KeepAlive, WriteTimeout time.Duration
	Logger                  zerolog.Logger
}

func (c *Config) fill() {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.DialTimeout, 2*time.Second)
	def(&c.KeepAlive, time.Second)
	def(&c.WriteTimeout, 5*time.Second)
}

func (c *Config) yamux() *yamux.Config {
	y := yamux.DefaultConfig()
	y.EnableKeepAlive = true
	y.KeepAliveInterval = c.KeepAlive
	y.ConnectionWriteTimeout = c.WriteTimeout
	y.StreamOpenTimeout = c.WriteTimeout
	y.LogOutput = io.Discard
	return y
}

// Dialer opens session streams to peers, keeping one link per peer and
// dialling it again when it broke. Safe for concurrent use.
type Dialer struct {
	cfg Config

	mu     sync.Mutex
	links  map[string]*link
	closed bool
}

// link is the dialled link to one peer; mu serialises (re)dialling it.
type link struct {
	mu   sync.Mutex
	sess *yamux.Session
}

// NewDialer returns a Dialer; it dials nothing until Open.
func NewDialer(cfg Config) *Dialer {
	cfg.fill()
	return &Dialer{cfg: cfg, links: map[string]*link{}}
}

// Open opens a stream for one session to peer, carrying client as the
// session's client address. The stream is a net.Conn for the session's
// AMQP bytes.
func (d *Dialer) Open(ctx context.Context, peer string, client net.Addr) (net.Conn, error) {
	st, err := d.stream(ctx, peer)
	if err != nil {
		return nil, err
	}
	addr := ""
	if client != nil {
		addr = client.String()
	}
	if dl, ok := ctx.Deadline(); ok {
		st.SetWriteDeadline(dl)
	}
	if _, err := st.Write(appendPreamble(nil, addr)); err != nil {
		st.Close()
		return nil, fmt.Errorf("peerlink: write to %s: %w", peer, err)
	}
	st.SetWriteDeadline(time.Time{})
	return st, nil
}

// Request sends one request to peer and returns its answer; an error the
// peer's handler returned comes back as a *RemoteError.
func (d *Dialer) Request(ctx context.Context, peer string, req []byte) ([]byte, error) {
	if len(req) > maxRequest {
		return nil, fmt.Errorf("peerlink: request of %d bytes, more than %d", len(req), maxRequest)
	}
	st, err := d.stream(ctx, peer)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if dl, ok := ctx.Deadline(); ok {
		st.SetDeadline(dl)
	}
	b := []byte{kindRequest}
	b = binary.BigEndian.AppendUint32(b, uint32(len(req)))
	if _, err := st.Write(append(b, req...)); err != nil {
		return nil, fmt.Errorf("peerlink: request to %s: %w", peer, err)
	}
	var h [5]byte
	if _, err := io.ReadFull(st, h[:]); err != nil {
		return nil, fmt.Errorf("peerlink: answer from %s: %w", peer, err)
	}
	n := binary.BigEndian.Uint32(h[1:])
	if n > maxRequest {
		return nil, fmt.Errorf("peerlink: answer from %s of %d bytes", peer, n)
	}
	ans := make([]byte, n)
	if _, err := io.ReadFull(st, ans); err != nil {
		return nil, fmt.Errorf("peerlink: answer from %s: %w", peer, err)
	}
	if h[0] != 0 {
		return nil, &RemoteError{Peer: peer, Text: string(ans)}
	}
	return ans, nil
}

// RemoteError is a request's refusal by the peer's handler.
type RemoteError struct{ Peer, Text string }

func (e *RemoteError) Error() string { return "peerlink: " + e.Peer + " refused: " + e.Text }

// stream opens a new stream on the link to peer, dialling the link first
// when it is not up.
func (d *Dialer) stream(ctx context.Context, peer string) (*yamux.Stream, error) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, ErrClosed
	}
	l := d.links[peer]
	if l == nil {
		l = &link{}
		d.links[peer] = l
	}
	d.mu.Unlock()
	sess, err := d.session(ctx, peer, l)
	if err != nil {
		return nil, err
	}
	st, err := sess.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("peerlink: open a stream to %s: %w", peer, err)
	}
	return st, nil
}

// session returns l's live yamux session, dialling it if needed.
func (d *Dialer) session(ctx context.Context, peer string, l *link) (*yamux.Session, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sess != nil && !l.sess.IsClosed() {
		return l.sess, nil
	}
	addr := ""
	if d.cfg.Resolve != nil {
		addr = d.cfg.Resolve(peer)
	}
	if addr == "" {
		return nil, fmt.Errorf("peerlink: no address for peer %q", peer)
	}
	dctx, cancel := context.WithTimeout(ctx, d.cfg.DialTimeout)
	defer cancel()
	var nd net.Dialer
	raw, err := nd.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("peerlink: dial %s at %s: %w", peer, addr, err)
	}
	if tc, ok := raw.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	stop := context.AfterFunc(dctx, func() { raw.Close() })
	conn, who, err := gm.AuthDial(raw, d.cfg.Auth, d.cfg.Self, Purpose)
	stopped := stop()
	if err != nil {
		return nil, fmt.Errorf("peerlink: %s at %s: %w", peer, addr, err)
	}
	if !stopped {
		conn.Close()
		return nil, fmt.Errorf("peerlink: %s at %s: %w", peer, addr, dctx.Err())
	}
	if who != peer {
		conn.Close()
		return nil, fmt.Errorf("peerlink: %s answered as %q, want %q", addr, who, peer)
	}
	sess, err := yamux.Client(conn, d.cfg.yamux())
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("peerlink: %s: %w", peer, err)
	}
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		sess.Close()
		return nil, ErrClosed
	}
	d.cfg.Logger.Debug().Str("peer", peer).Str("addr", addr).Msg("peer link up")
	l.sess = sess
	return sess, nil
}

// Close closes every link and the sessions' streams on them.
func (d *Dialer) Close() error {
	d.mu.Lock()
	d.closed = true
	links := d.links
	d.links = map[string]*link{}
	d.mu.Unlock()
	for _, l := range links {
		l.mu.Lock()
		if l.sess != nil {
			l.sess.Close()
		}
		l.mu.Unlock()
	}
	return nil
}

// Handler is what a link's accepting side does with the peer's streams.
type Handler struct {
	// Session takes a session stream, with RemoteAddr the session's
	// client address; it owns the stream.
	Session func(net.Conn)
	// Request answers one request from peer (nil: requests are refused).
	Request func(ctx context.Context, peer string, req []byte) ([]byte, error)
}

// Serve runs the accepting side of one link whose handshake conn passed
// (a gm.NodeConfig.Handoff handler for Purpose): it accepts the peer's
// streams until the link or ctx ends, reads each stream's preamble, and
// hands a session stream to h.Session, a request to h.Request, each in its
// own goroutine. Serve closes conn and waits for nothing but its own reads;
// the handlers' goroutines end when their stream does, and every stream
// ends with the link.
func Serve(ctx context.Context, conn net.Conn, peer string, h Handler, log zerolog.Logger) {
	log = log.With().Str("peer", peer).Logger()
	cfg := Config{}
	cfg.fill()
	sess, err := yamux.Server(conn, cfg.yamux())
	if err != nil {
		conn.Close()
		log.Warn().Err(err).Msg("peer link refused")
		return
	}
	defer sess.Close()
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	log.Debug().Msg("peer link accepted")
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			if ctx.Err() == nil && !sess.IsClosed() {
				log.Warn().Err(err).Msg("peer link failed")
			}
			return
		}
		go func() {
			st.SetReadDeadline(time.Now().Add(cfg.WriteTimeout))
			var kind [1]byte
			if _, err := io.ReadFull(st, kind[:]); err != nil {
				st.Close()
				return
			}
			if kind[0] == kindRequest {
				serveRequest(ctx, st, peer, h, log)
				return
			}
			addr, err := readPreamble(io.MultiReader(bytes.NewReader(kind[:]), st))
			if err != nil {
				log.Warn().Err(err).Msg("peer sent a stream without a valid preamble; closed it")
				st.Close()
				return
			}
			st.SetReadDeadline(time.Time{})
			h.Session(&streamConn{Conn: st, remote: clientAddr(addr)})
		}()
	}
}

// serveRequest reads one request from st, answers it and closes st.
func serveRequest(ctx context.Context, st net.Conn, peer string, h Handler, log zerolog.Logger) {
	defer st.Close()
	var n [4]byte
	if _, err := io.ReadFull(st, n[:]); err != nil {
		return
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > maxRequest {
		log.Warn().Uint32("bytes", size).Msg("peer sent an oversized request; closed it")
		return
	}
	req := make([]byte, size)
	if _, err := io.ReadFull(st, req); err != nil {
		return
	}
	st.SetReadDeadline(time.Time{})
	var ans []byte
	err := errors.New("requests are not served here")
	if h.Request != nil {
		ans, err = h.Request(ctx, peer, req)
	}
	status := byte(0)
	if err != nil {
		status, ans = 1, []byte(err.Error())
	}
	b := []byte{status}
	b = binary.BigEndian.AppendUint32(b, uint32(len(ans)))
	st.SetWriteDeadline(time.Now().Add(5 * time.Second))
	// A failed write means the asker is gone; it gives up on its own
	// deadline and the stream is closed by the caller.
	_, _ = st.Write(append(b, ans...))
}

func appendPreamble(b []byte, client string) []byte {
	if len(client) > maxAddrLen {
		client = client[:maxAddrLen]
	}
	b = append(b, preambleVersion)
	b = binary.BigEndian.AppendUint16(b, uint16(len(client)))
	return append(b, client...)
}

func readPreamble(r io.Reader) (string, error) {
	var h [3]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadPreamble, err)
	}
	if h[0] != preambleVersion {
		return "", fmt.Errorf("%w: version %d", ErrBadPreamble, h[0])
	}
	n := binary.BigEndian.Uint16(h[1:])
	if n > maxAddrLen {
		return "", fmt.Errorf("%w: address of %d bytes", ErrBadPreamble, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadPreamble, err)
	}
	return string(b), nil
}

// streamConn is an accepted stream whose RemoteAddr is the session's
// client, as the front saw it.
type streamConn struct {
	net.Conn
	remote net.Addr
}

func (c *streamConn) RemoteAddr() net.Addr { return c.remote }

// clientAddr parses a carried address: a TCP address when it is one, so a
// PROXY header to the broker can name it.
func clientAddr(s string) net.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return net.TCPAddrFromAddrPort(ap)
	}
	return carriedAddr(s)
}

type carriedAddr string

func (a carriedAddr) Network() string { return "peer" }
func (a carriedAddr) String() string  { return string(a) }
