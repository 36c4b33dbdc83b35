package proxy

// PROXY protocol (HAProxy's proxy-protocol.txt, v1 text and v2 binary) on
// both sides of the proxy:
//
//   - clients' connections may start with a header written by a load
//     balancer; wrapProxyListener reads it, subject to Options.ProxyProtocol
//     and Options.TrustedProxies, so that conn.RemoteAddr() is the real client;
//   - the proxy may write a header to the broker (Options.SendProxyProtocol)
//     so the broker sees that client address too; see writeProxyHeader.
//
// Parsing is github.com/pires/go-proxyproto's; this file only decides which
// peers may send a header and turns the library's errors into ones that name
// the peer and the problem.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/rs/zerolog"
)

// ErrProxyHeader is matched (errors.Is) by every error a client connection
// returns because its PROXY protocol header was missing, not allowed,
// malformed or unusable. The concrete error is a *ProxyHeaderError.
var ErrProxyHeader = errors.New("bad PROXY protocol header")

// ProxyHeaderError is returned by Read and Write of a client connection whose
// PROXY protocol header could not be accepted. The connection is unusable; the
// server closes it and logs the error, which names the peer.
type ProxyHeaderError struct {
	// Peer is the address of the TCP peer (the load balancer, or whoever
	// connected), not an address from the header.
	Peer net.Addr
	// Reason says what was wrong, in words.
	Reason string
	// Err is the underlying error: go-proxyproto's (proxyproto.ErrNoProxyProtocol,
	// proxyproto.ErrSuperfluousProxyHeader, a parse error, …) or the reason a
	// well-formed header was refused.
	Err error

	detail bool // Error appends Err's text: Reason does not already say it
}

func (e *ProxyHeaderError) Error() string {
	s := fmt.Sprintf("PROXY protocol header from %s: %s", addrString(e.Peer), e.Reason)
	if e.detail && e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap lets errors.Is match ErrProxyHeader and the underlying error.
func (e *ProxyHeaderError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrProxyHeader}
	}
	return []error{ErrProxyHeader, e.Err}
}

// errUntrustedProxy is what the connection policy returns for a peer that
// may not connect at all (mode required, peer not trusted). It wraps
// proxyproto.ErrInvalidUpstream so that the library closes that connection and
// keeps accepting.
var errUntrustedProxy = fmt.Errorf("%w: peer is not a trusted proxy", proxyproto.ErrInvalidUpstream)

// validateProxyProtocol checks the PROXY protocol fields of opts. NewServer
// should call it; wrapProxyListener fails closed on values it rejects.
func validateProxyProtocol(opts Options) error {
	switch opts.ProxyProtocol {
	case "", ProxyProtocolOff, ProxyProtocolOptional, ProxyProtocolRequired:
	default:
		return fmt.Errorf("proxy: ProxyProtocol %q is not one of off, optional, required", opts.ProxyProtocol)
	}
	for _, p := range opts.TrustedProxies {
		if !p.IsValid() {
			return fmt.Errorf("proxy: TrustedProxies holds an invalid prefix %v", p)
		}
	}
	if opts.ProxyHeaderTimeout < 0 {
		return fmt.Errorf("proxy: ProxyHeaderTimeout %v is negative", opts.ProxyHeaderTimeout)
	}
	switch opts.SendProxyProtocol {
	case "", "v1", "v2":
	default:
		return fmt.Errorf("proxy: SendProxyProtocol %q is not one of \"\", v1, v2", opts.SendProxyProtocol)
	}
	return nil
}

// wrapProxyListener returns ln wrapped so that accepted connections have
// their PROXY protocol header read according to opts:
//
//   - ProxyProtocolOff (or ""): ln itself is returned; nothing is read, and a
//     header is whatever the AMQP layer makes of it (a bad protocol header).
//   - ProxyProtocolOptional: a peer whose address is in opts.TrustedProxies
//     may start with a v1 or v2 header; if it does, RemoteAddr and LocalAddr
//     of the connection are the header's addresses. Any other peer is used as
//     it is if it sends no header, and its connection fails (a
//     *ProxyHeaderError on the first Read) if it sends one.
//   - ProxyProtocolRequired: a trusted peer must start with a header (a
//     connection without one fails on its first Read); a connection from any
//     other peer is closed at once, never returned by Accept, and logged at
//     warn level on opts.Logger.
//
// An empty TrustedProxies trusts nobody: with optional, headers are refused
// from everyone; with required, every connection is refused. Addresses are
// compared without IPv4-in-IPv6 mapping, so 10.0.0.0/8 matches a peer seen
// as ::ffff:10.1.2.3. A peer whose address is not an IP (a Unix socket) is
// never trusted.
//
// The header must arrive within opts.ProxyHeaderTimeout of the first Read
// (DefaultOptions' value when zero). When it does not, the connection fails
// under required; under optional the wait ends and the connection is read as
// one without a header (the handshake timeout still bounds it). A header
// carrying a UDP or Unix address is refused; a LOCAL (v2) or UNKNOWN (v1)
// header, as load balancers send for health checks, is accepted and leaves
// the socket's own addresses in place.
//
// A bad header fails only its own connection: Read and Write return a
// *ProxyHeaderError, Accept goes on. An unknown mode fails closed: every
// connection is refused and logged.
func wrapProxyListener(ln net.Listener, opts Options) net.Listener {
	mode := opts.ProxyProtocol
	if mode == "" || mode == ProxyProtocolOff {
		return ln
	}
	timeout := opts.ProxyHeaderTimeout
	if timeout <= 0 {
		timeout = DefaultOptions.ProxyHeaderTimeout
	}
	trusted := append([]netip.Prefix(nil), opts.TrustedProxies...)
	log := opts.Logger
	policy := func(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
		isTrusted := addrTrusted(o.Upstream, trusted)
		switch {
		case mode == ProxyProtocolOptional && isTrusted:
			return proxyproto.USE, nil
		case mode == ProxyProtocolOptional:
			return proxyproto.REJECT, nil
		case mode == ProxyProtocolRequired && isTrusted:
			return proxyproto.REQUIRE, nil
		case mode == ProxyProtocolRequired:
			log.Warn().Str("peer", addrString(o.Upstream)).
				Msg("refused connection: PROXY protocol is required and the peer is not a trusted proxy")
			return proxyproto.REJECT, errUntrustedProxy
		default:
			log.Error().Str("peer", addrString(o.Upstream)).Str("mode", string(mode)).
				Msg("refused connection: unknown PROXY protocol mode")
			return proxyproto.REJECT, errUntrustedProxy
		}
	}
	return &proxyProtoListener{
		Listener: &proxyproto.Listener{
			Listener:          ln,
			ConnPolicy:        policy,
			ValidateHeader:    validateProxyHeader,
			ReadHeaderTimeout: timeout,
		},
		mode:    mode,
		timeout: timeout,
	}
}

// refusedHeaderError is validateProxyHeader's error: a well-formed header
// the proxy cannot use.
type refusedHeaderError string

func (e refusedHeaderError) Error() string { return string(e) }

// validateProxyHeader accepts PROXY headers for TCP clients and LOCAL
// headers; a client of an AMQP listener cannot be a UDP or Unix peer.
func validateProxyHeader(h *proxyproto.Header) error {
	if h.Command.IsLocal() {
		return nil
	}
	switch h.TransportProtocol {
	case proxyproto.TCPv4, proxyproto.TCPv6:
		return nil
	case proxyproto.UDPv4, proxyproto.UDPv6:
		return refusedHeaderError("header names a UDP client, not TCP")
	case proxyproto.UnixStream, proxyproto.UnixDatagram:
		return refusedHeaderError("header names a Unix socket client, not TCP")
	default:
		return refusedHeaderError(fmt.Sprintf("header names an unsupported transport (0x%02x)", byte(h.TransportProtocol)))
	}
}

// addrTrusted reports whether a's IP is inside one of trusted.
func addrTrusted(a net.Addr, trusted []netip.Prefix) bool {
	ip, ok := addrIP(a)
	if !ok {
		return false
	}
	for _, p := range trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func addrIP(a net.Addr) (netip.Addr, bool) {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, ok := netip.AddrFromSlice(a.IP)
		return ip.Unmap(), ok
	case nil:
		return netip.Addr{}, false
	default:
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return netip.Addr{}, false
		}
		return ap.Addr().Unmap(), true
	}
}

func addrString(a net.Addr) string {
	if a == nil {
		return "unknown"
	}
	return a.String()
}

// proxyProtoListener hands out proxyProtoConns.
type proxyProtoListener struct {
	*proxyproto.Listener
	mode    ProxyProtocolMode
	timeout time.Duration
}

func (l *proxyProtoListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	pc, ok := c.(*proxyproto.Conn)
	if !ok { // the library returns raw conns only for SKIP, which we never use
		return c, nil
	}
	return &proxyProtoConn{c: pc, mode: l.mode, timeout: l.timeout}, nil
}

// proxyProtoConn is a client connection whose first Read or Write consumes
// its PROXY header. RemoteAddr and LocalAddr are the header's addresses once
// a header was accepted (they block on the header like Read does).
type proxyProtoConn struct {
	c       *proxyproto.Conn
	mode    ProxyProtocolMode
	timeout time.Duration
}

// ProxyHeader returns the header the client sent, nil if none (or if it was
// refused).
func (c *proxyProtoConn) ProxyHeader() *proxyproto.Header { return c.c.ProxyHeader() }

// Raw returns the TCP connection under the header reader, for socket options.
func (c *proxyProtoConn) Raw() net.Conn { return c.c.Raw() }

func (c *proxyProtoConn) Read(b []byte) (int, error) {
	n, err := c.c.Read(b)
	return n, c.explain(err)
}

func (c *proxyProtoConn) Write(b []byte) (int, error) {
	n, err := c.c.Write(b)
	return n, c.explain(err)
}

func (c *proxyProtoConn) Close() error                       { return c.c.Close() }
func (c *proxyProtoConn) LocalAddr() net.Addr                { return c.c.LocalAddr() }
func (c *proxyProtoConn) RemoteAddr() net.Addr               { return c.c.RemoteAddr() }
func (c *proxyProtoConn) SetDeadline(t time.Time) error      { return c.c.SetDeadline(t) }
func (c *proxyProtoConn) SetReadDeadline(t time.Time) error  { return c.c.SetReadDeadline(t) }
func (c *proxyProtoConn) SetWriteDeadline(t time.Time) error { return c.c.SetWriteDeadline(t) }

// explain turns go-proxyproto's header errors into *ProxyHeaderError and
// passes every other error (EOF, deadlines, closed) through unchanged.
func (c *proxyProtoConn) explain(err error) error {
	if err == nil || !isHeaderError(err) {
		return err
	}
	e := &ProxyHeaderError{Peer: c.c.Raw().RemoteAddr(), Err: err}
	switch {
	case errors.Is(err, proxyproto.ErrNoProxyProtocol):
		e.Reason = fmt.Sprintf("missing: the connection did not start with one (waited up to %v), "+
			"and trusted proxies must send one when the mode is %s", c.timeout, c.mode)
	case errors.Is(err, proxyproto.ErrSuperfluousProxyHeader):
		e.Reason = "refused: the peer is not a trusted proxy"
	case errors.As(err, new(refusedHeaderError)):
		e.Reason = "refused: " + err.Error()
	default:
		e.Reason = "truncated or malformed"
		e.detail = true
	}
	return e
}

// headerErrors are go-proxyproto's errors for a missing, refused or
// malformed header. Once header processing failed, the library returns the
// same error from every Read and Write; other errors come from the socket.
var headerErrors = []error{
	proxyproto.ErrNoProxyProtocol,
	proxyproto.ErrSuperfluousProxyHeader,
	proxyproto.ErrCantReadVersion1Header,
	proxyproto.ErrVersion1HeaderTooLong,
	proxyproto.ErrLineMustEndWithCrlf,
	proxyproto.ErrCantReadProtocolVersionAndCommand,
	proxyproto.ErrCantReadAddressFamilyAndProtocol,
	proxyproto.ErrCantReadLength,
	proxyproto.ErrCantResolveSourceUnixAddress,
	proxyproto.ErrCantResolveDestinationUnixAddress,
	proxyproto.ErrUnknownProxyProtocolVersion,
	proxyproto.ErrUnsupportedProtocolVersionAndCommand,
	proxyproto.ErrUnsupportedAddressFamilyAndProtocol,
	proxyproto.ErrInvalidLength,
	proxyproto.ErrInvalidAddress,
	proxyproto.ErrInvalidPortNumber,
	// A v2 header cut off inside its TLVs: the library passes io.ReadFull's
	// error up unwrapped. A plain socket read never returns it.
	io.ErrUnexpectedEOF,
}

func isHeaderError(err error) bool {
	if errors.As(err, new(refusedHeaderError)) {
		return true
	}
	for _, target := range headerErrors {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// writeProxyHeader writes a PROXY protocol header naming client (the real
// client's address) and local (the address the client connected to) to w,
// the fresh connection to the broker, in one Write. version is "v1" or "v2";
// "" writes nothing. When client and local are not both TCP addresses the
// header is v1 "UNKNOWN" / v2 LOCAL, and the broker sees the proxy's own
// address.
func writeProxyHeader(w io.Writer, version string, client, local net.Addr) error {
	var v byte
	switch version {
	case "":
		return nil
	case "v1":
		v = 1
	case "v2":
		v = 2
	default:
		return fmt.Errorf("proxy: PROXY protocol version %q is not v1 or v2", version)
	}
	h := proxyproto.HeaderProxyFromAddrs(v, client, local)
	if _, err := h.WriteTo(w); err != nil {
		return fmt.Errorf("proxy: writing PROXY %s header for client %s: %w", version, addrString(client), err)
	}
	return nil
}

// logProxyHeaderError is a helper for the server: it logs err at warn level
// with the peer's address when err is a PROXY header error and reports
// whether it was one.
func logProxyHeaderError(log zerolog.Logger, err error) bool {
	var he *ProxyHeaderError
	if !errors.As(err, &he) {
		return false
	}
	log.Warn().Str("peer", addrString(he.Peer)).Err(err).Msg("closing connection: bad PROXY protocol header")
	return true
}
