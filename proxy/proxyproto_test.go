package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

// The tests in this file run on real loopback sockets. Connections from
// "untrusted" peers are dialled from 127.0.0.2, which Linux routes over lo
// like 127.0.0.1.

const ppWait = 10 * time.Second // upper bound for anything a test waits for

var ppAMQPHeader = []byte("AMQP\x00\x00\x09\x01")

// ppNoLeaks checks, after the test's cleanups, that it left no goroutine
// behind. Call it first, so that its cleanup runs last.
func ppNoLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// ppSyncBuffer collects log output written from the accept goroutine.
type ppSyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *ppSyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *ppSyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// ppServer accepts on a wrapped listener in one goroutine that it owns; the
// test's cleanup closes the listener and waits for that goroutine.
type ppServer struct {
	ln    net.Listener
	conns chan net.Conn
	logs  *ppSyncBuffer
}

func ppStart(t *testing.T, opts Options) *ppServer {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &ppServer{conns: make(chan net.Conn), logs: &ppSyncBuffer{}}
	opts.Logger = zerolog.New(s.logs)
	s.ln = wrapProxyListener(raw, opts)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			select {
			case s.conns <- c:
			case <-stop:
				c.Close()
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		s.ln.Close()
		<-done
	})
	return s
}

// next returns the next accepted connection, closed at the end of the test.
func (s *ppServer) next(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-s.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(ppWait):
		t.Fatal("no connection accepted")
		return nil
	}
}

func (s *ppServer) addr() string { return s.ln.Addr().String() }

// ppDial connects from 127.0.0.1 (from is "") or from another loopback
// address, and writes data at once.
func ppDial(t *testing.T, s *ppServer, from string, data []byte) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: ppWait}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", s.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if len(data) > 0 {
		if _, err := c.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// ppReadAMQP reads the 8-byte AMQP protocol header the client sent.
func ppReadAMQP(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(ppWait)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(ppAMQPHeader))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading the AMQP header after the PROXY header: %v", err)
	}
	if !bytes.Equal(got, ppAMQPHeader) {
		t.Fatalf("read %q, want the AMQP header %q", got, ppAMQPHeader)
	}
}

// ppReadErr reads from c and returns the *ProxyHeaderError it must fail with.
func ppReadErr(t *testing.T, c net.Conn) *ProxyHeaderError {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(ppWait)); err != nil {
		t.Fatal(err)
	}
	n, err := c.Read(make([]byte, 64))
	if err == nil {
		t.Fatalf("read %d bytes, want a PROXY header error", n)
	}
	var he *ProxyHeaderError
	if !errors.As(err, &he) || !errors.Is(err, ErrProxyHeader) {
		t.Fatalf("read error %v (%T), want a *ProxyHeaderError", err, err)
	}
	// The same error again on Write: the connection stays unusable.
	if _, werr := c.Write([]byte("x")); !errors.Is(werr, ErrProxyHeader) {
		t.Fatalf("write after a bad header: %v, want the header error", werr)
	}
	return he
}

// ppV2 builds a v2 PROXY header for TCP over IPv4 by hand, independently of
// the library's writer. famProto is 0x11 for TCP4, 0x12 for UDP4.
func ppV2(cmd, famProto byte, src, dst string, sport, dport uint16) []byte {
	b := []byte("\r\n\r\n\x00\r\nQUIT\n")
	b = append(b, 0x20|cmd, famProto)
	b = binary.BigEndian.AppendUint16(b, 12)
	b = append(b, net.ParseIP(src).To4()...)
	b = append(b, net.ParseIP(dst).To4()...)
	b = binary.BigEndian.AppendUint16(b, sport)
	b = binary.BigEndian.AppendUint16(b, dport)
	return b
}

func ppJoin(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func ppOpts(mode ProxyProtocolMode, trusted ...string) Options {
	o := Options{ProxyProtocol: mode, ProxyHeaderTimeout: 2 * time.Second}
	for _, p := range trusted {
		o.TrustedProxies = append(o.TrustedProxies, netip.MustParsePrefix(p))
	}
	return o
}

func TestProxyProtoTrustedHeaderGivesClientAddress(t *testing.T) {
	ppNoLeaks(t)
	cases := []struct {
		name             string
		header           []byte
		wantRem, wantLoc string
	}{
		{"v1 TCP4", []byte("PROXY TCP4 203.0.113.7 198.51.100.1 40000 5672\r\n"), "203.0.113.7:40000", "198.51.100.1:5672"},
		{"v1 TCP6", []byte("PROXY TCP6 2001:db8::7 2001:db8::1 40001 5672\r\n"), "[2001:db8::7]:40001", "[2001:db8::1]:5672"},
		{"v2 TCP4", ppV2(1, 0x11, "203.0.113.8", "198.51.100.1", 40002, 5672), "203.0.113.8:40002", "198.51.100.1:5672"},
	}
	for _, mode := range []ProxyProtocolMode{ProxyProtocolOptional, ProxyProtocolRequired} {
		s := ppStart(t, ppOpts(mode, "127.0.0.0/8"))
		for _, tc := range cases {
			t.Run(string(mode)+" "+tc.name, func(t *testing.T) {
				ppDial(t, s, "", ppJoin(tc.header, ppAMQPHeader))
				c := s.next(t)
				ppReadAMQP(t, c)
				if got := c.RemoteAddr().String(); got != tc.wantRem {
					t.Errorf("RemoteAddr = %s, want %s", got, tc.wantRem)
				}
				if got := c.LocalAddr().String(); got != tc.wantLoc {
					t.Errorf("LocalAddr = %s, want %s", got, tc.wantLoc)
				}
				if c.(*proxyProtoConn).ProxyHeader() == nil {
					t.Error("ProxyHeader() = nil after a header was accepted")
				}
			})
		}
	}
}

func TestProxyProtoOptionalWithoutHeader(t *testing.T) {
	ppNoLeaks(t)
	// Trusted and untrusted peers alike may skip the header.
	s := ppStart(t, ppOpts(ProxyProtocolOptional, "127.0.0.1/32"))
	for _, from := range []string{"127.0.0.1", "127.0.0.2"} {
		cl := ppDial(t, s, from, ppAMQPHeader)
		c := s.next(t)
		ppReadAMQP(t, c)
		if got, want := c.RemoteAddr().String(), cl.LocalAddr().String(); got != want {
			t.Errorf("from %s: RemoteAddr = %s, want the socket peer %s", from, got, want)
		}
	}
}

func TestProxyProtoRequiredWithoutHeaderFails(t *testing.T) {
	ppNoLeaks(t)
	s := ppStart(t, ppOpts(ProxyProtocolRequired, "127.0.0.0/8"))
	cl := ppDial(t, s, "", ppAMQPHeader)
	he := ppReadErr(t, s.next(t))
	if !errors.Is(he, proxyproto.ErrNoProxyProtocol) {
		t.Errorf("error %v does not wrap ErrNoProxyProtocol", he)
	}
	if !strings.Contains(he.Error(), "missing") || !strings.Contains(he.Error(), cl.LocalAddr().String()) {
		t.Errorf("error %q should say the header is missing and name the peer %s", he, cl.LocalAddr())
	}
}

func TestProxyProtoUntrustedHeaderRefused(t *testing.T) {
	ppNoLeaks(t)
	header := []byte("PROXY TCP4 203.0.113.7 198.51.100.1 40000 5672\r\n")

	t.Run("optional", func(t *testing.T) {
		s := ppStart(t, ppOpts(ProxyProtocolOptional, "10.0.0.0/8"))
		ppDial(t, s, "", ppJoin(header, ppAMQPHeader))
		he := ppReadErr(t, s.next(t))
		if !errors.Is(he, proxyproto.ErrSuperfluousProxyHeader) || !strings.Contains(he.Error(), "not a trusted proxy") {
			t.Errorf("error %q should say the peer is not a trusted proxy", he)
		}
	})

	t.Run("required", func(t *testing.T) {
		// Trust 127.0.0.1 only; 127.0.0.2 is refused at accept whatever it sends.
		s := ppStart(t, ppOpts(ProxyProtocolRequired, "127.0.0.1/32"))
		for _, data := range [][]byte{ppJoin(header, ppAMQPHeader), ppAMQPHeader} {
			cl := ppDial(t, s, "127.0.0.2", data)
			if err := cl.SetReadDeadline(time.Now().Add(ppWait)); err != nil {
				t.Fatal(err)
			}
			if n, err := cl.Read(make([]byte, 1)); err == nil || errors.Is(err, net.ErrClosed) || isTimeout(err) {
				t.Fatalf("untrusted client read %d bytes, err %v; want the server to close the connection", n, err)
			}
		}
		// Accept went on: the next connection it returns is the trusted one.
		ppDial(t, s, "127.0.0.1", ppJoin(header, ppAMQPHeader))
		c := s.next(t)
		ppReadAMQP(t, c)
		if got := c.RemoteAddr().String(); got != "203.0.113.7:40000" {
			t.Errorf("RemoteAddr = %s, want the header's 203.0.113.7:40000", got)
		}
		logs := s.logs.String()
		if n := strings.Count(logs, `"peer":"127.0.0.2:`); n != 2 || !strings.Contains(logs, "not a trusted proxy") {
			t.Errorf("want two warn lines naming peer 127.0.0.2, got logs:\n%s", logs)
		}
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestProxyProtoBadHeaders(t *testing.T) {
	ppNoLeaks(t)
	v2 := ppV2(1, 0x11, "203.0.113.7", "198.51.100.1", 40000, 5672)
	cases := []struct {
		name      string
		data      []byte
		closeSend bool // half-close after sending: the header ends there
		wantErr   error
		wantText  string
	}{
		{"v1 truncated", []byte("PROXY TCP4 203.0.113.7 198.51"), false, proxyproto.ErrCantReadVersion1Header, "truncated or malformed"},
		{"v1 truncated then EOF", []byte("PROXY TCP4 203.0.113.7 198.51"), true, proxyproto.ErrCantReadVersion1Header, "can't read version 1 header"},
		{"v1 garbage protocol", []byte("PROXY xyz\r\nAMQP\x00\x00\x09\x01"), false, proxyproto.ErrCantReadAddressFamilyAndProtocol, "address family"},
		{"v1 no CR", []byte("PROXY TCP4 203.0.113.7 198.51.100.1 40000 5672\nAMQP"), false, proxyproto.ErrLineMustEndWithCrlf, `\r\n`},
		{"v1 bad address", []byte("PROXY TCP4 203.0.113.999 198.51.100.1 40000 5672\r\nAMQP"), false, proxyproto.ErrInvalidAddress, "invalid address"},
		{"v2 truncated", v2[:20], true, proxyproto.ErrInvalidAddress, "unexpected EOF"},
		{"v2 bad version", ppJoin(v2[:12], []byte{0x31}, v2[13:]), false, proxyproto.ErrUnsupportedProtocolVersionAndCommand, "unsupported"},
		{"v2 UDP client", ppJoin(ppV2(1, 0x12, "203.0.113.7", "198.51.100.1", 40000, 5672), ppAMQPHeader), false, nil, "names a UDP client"},
	}
	for _, mode := range []ProxyProtocolMode{ProxyProtocolOptional, ProxyProtocolRequired} {
		s := ppStart(t, ppOpts(mode, "127.0.0.0/8"))
		for _, tc := range cases {
			t.Run(string(mode)+" "+tc.name, func(t *testing.T) {
				cl := ppDial(t, s, "", tc.data)
				if tc.closeSend {
					if err := cl.(*net.TCPConn).CloseWrite(); err != nil {
						t.Fatal(err)
					}
				}
				he := ppReadErr(t, s.next(t))
				if tc.wantErr != nil && !errors.Is(he, tc.wantErr) {
					t.Errorf("error %v does not wrap %v", he, tc.wantErr)
				}
				if msg := he.Error(); !strings.Contains(msg, tc.wantText) ||
					!strings.HasPrefix(msg, "PROXY protocol header from "+cl.LocalAddr().String()+": ") {
					t.Errorf("error %q should name the peer %s and contain %q", msg, cl.LocalAddr(), tc.wantText)
				}
			})
		}
		// The listener is still serving: a good header works after all that.
		ppDial(t, s, "", ppJoin(v2, ppAMQPHeader))
		c := s.next(t)
		ppReadAMQP(t, c)
		if got := c.RemoteAddr().String(); got != "203.0.113.7:40000" {
			t.Errorf("%s: after bad headers, RemoteAddr = %s, want 203.0.113.7:40000", mode, got)
		}
	}
}

func TestProxyProtoLocalHeaderKeepsSocketAddress(t *testing.T) {
	ppNoLeaks(t)
	s := ppStart(t, ppOpts(ProxyProtocolRequired, "127.0.0.0/8"))
	v2Local := []byte("\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00") // LOCAL, UNSPEC, no address block
	for _, hdr := range [][]byte{
		ppJoin(v2Local, ppAMQPHeader),
		ppJoin([]byte("PROXY UNKNOWN\r\n"), ppAMQPHeader),
	} {
		cl := ppDial(t, s, "", hdr)
		c := s.next(t)
		ppReadAMQP(t, c)
		if got, want := c.RemoteAddr().String(), cl.LocalAddr().String(); got != want {
			t.Errorf("header %q: RemoteAddr = %s, want the socket peer %s", hdr, got, want)
		}
	}
}

func TestProxyProtoHeaderTimeout(t *testing.T) {
	ppNoLeaks(t)
	opts := ppOpts(ProxyProtocolRequired, "127.0.0.0/8")
	opts.ProxyHeaderTimeout = 300 * time.Millisecond
	s := ppStart(t, opts)
	ppDial(t, s, "", nil) // connects and sends nothing
	c := s.next(t)
	start := time.Now()
	he := ppReadErr(t, c) // ppReadErr's own deadline (ppWait) is far beyond the header timeout
	if elapsed := time.Since(start); elapsed < opts.ProxyHeaderTimeout {
		t.Errorf("gave up after %v, before the header timeout %v", elapsed, opts.ProxyHeaderTimeout)
	}
	if !errors.Is(he, proxyproto.ErrNoProxyProtocol) || !strings.Contains(he.Error(), "300ms") {
		t.Errorf("error %q should say no header came within 300ms", he)
	}
}

// Under optional, a trusted peer that sends nothing within the header
// timeout is served as a peer without a header.
func TestProxyProtoOptionalSilentPeerServedAfterTimeout(t *testing.T) {
	ppNoLeaks(t)
	opts := ppOpts(ProxyProtocolOptional, "127.0.0.0/8")
	opts.ProxyHeaderTimeout = 100 * time.Millisecond
	s := ppStart(t, opts)
	cl := ppDial(t, s, "", nil)
	c := s.next(t)
	// Write only well after the header timeout: what is tested is the
	// server's behaviour once its timeout fired, so this waits on a timer.
	wrote := make(chan error, 1)
	timer := time.AfterFunc(4*opts.ProxyHeaderTimeout, func() {
		_, err := cl.Write(ppAMQPHeader)
		wrote <- err
	})
	defer timer.Stop()
	ppReadAMQP(t, c)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if got, want := c.RemoteAddr().String(), cl.LocalAddr().String(); got != want {
		t.Errorf("RemoteAddr = %s, want the socket peer %s", got, want)
	}
}

func TestProxyProtoOffAndUnknownMode(t *testing.T) {
	ppNoLeaks(t)
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	for _, m := range []ProxyProtocolMode{"", ProxyProtocolOff} {
		if got := wrapProxyListener(raw, Options{ProxyProtocol: m}); got != raw {
			t.Errorf("mode %q: got a wrapped listener, want ln itself", m)
		}
	}

	// An unknown mode fails closed: the connection is refused and logged.
	s := ppStart(t, ppOpts("sometimes", "127.0.0.0/8"))
	cl := ppDial(t, s, "", ppAMQPHeader)
	if err := cl.SetReadDeadline(time.Now().Add(ppWait)); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("read: %v, want the connection closed by the server", err)
	}
	if logs := s.logs.String(); !strings.Contains(logs, "unknown PROXY protocol mode") {
		t.Errorf("logs should report the unknown mode:\n%s", logs)
	}
}

func TestAddrTrusted(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}
	cases := []struct {
		addr net.Addr
		want bool
	}{
		{&net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 1}, true},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:10.1.2.3"), Port: 1}, true},
		{&net.TCPAddr{IP: net.ParseIP("11.1.2.3"), Port: 1}, false},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8::5"), Port: 1}, true},
		{&net.TCPAddr{IP: net.ParseIP("2001:db9::5"), Port: 1}, false},
		{&net.UnixAddr{Name: "/tmp/sock", Net: "unix"}, false},
		{nil, false},
	}
	for _, tc := range cases {
		if got := addrTrusted(tc.addr, trusted); got != tc.want {
			t.Errorf("addrTrusted(%v) = %v, want %v", tc.addr, got, tc.want)
		}
	}
	if addrTrusted(&net.TCPAddr{IP: net.ParseIP("10.1.2.3")}, nil) {
		t.Error("an empty trusted list must trust nobody")
	}
}

func TestWriteProxyHeader(t *testing.T) {
	ppNoLeaks(t)
	cases := []struct {
		version       string
		client, local *net.TCPAddr
	}{
		{"v1", &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 40000}, &net.TCPAddr{IP: net.ParseIP("198.51.100.1"), Port: 5673}},
		{"v2", &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 40000}, &net.TCPAddr{IP: net.ParseIP("198.51.100.1"), Port: 5673}},
		{"v1", &net.TCPAddr{IP: net.ParseIP("2001:db8::7"), Port: 40000}, &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 5673}},
		{"v2", &net.TCPAddr{IP: net.ParseIP("2001:db8::7"), Port: 40000}, &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 5673}},
	}
	for _, tc := range cases {
		t.Run(tc.version+" "+tc.client.String(), func(t *testing.T) {
			// Over a real socket, as the proxy writes to a broker.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			sc, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			if err := writeProxyHeader(c, tc.version, tc.client, tc.local); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write(ppAMQPHeader); err != nil {
				t.Fatal(err)
			}
			if err := sc.SetReadDeadline(time.Now().Add(ppWait)); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(sc)
			h, err := proxyproto.Read(br)
			if err != nil {
				t.Fatalf("reading back the %s header: %v", tc.version, err)
			}
			if want := map[string]byte{"v1": 1, "v2": 2}[tc.version]; h.Version != want {
				t.Errorf("header version %d, want %d", h.Version, want)
			}
			if h.Command != proxyproto.PROXY || h.SourceAddr.String() != tc.client.String() || h.DestinationAddr.String() != tc.local.String() {
				t.Errorf("header %v %v -> %v, want PROXY %v -> %v", h.Command, h.SourceAddr, h.DestinationAddr, tc.client, tc.local)
			}
			rest := make([]byte, len(ppAMQPHeader))
			if _, err := io.ReadFull(br, rest); err != nil || !bytes.Equal(rest, ppAMQPHeader) {
				t.Errorf("after the header read %q (%v), want the AMQP header", rest, err)
			}
		})
	}
}

func TestWriteProxyHeaderVersions(t *testing.T) {
	var b bytes.Buffer
	if err := writeProxyHeader(&b, "", &net.TCPAddr{}, &net.TCPAddr{}); err != nil || b.Len() != 0 {
		t.Errorf(`version "": wrote %q, err %v; want nothing`, b.Bytes(), err)
	}
	if err := writeProxyHeader(&b, "v3", &net.TCPAddr{}, &net.TCPAddr{}); err == nil || !strings.Contains(err.Error(), `"v3"`) {
		t.Errorf("version v3: err %v, want one naming the version", err)
	}
	// Non-TCP addresses: an UNKNOWN line, so the broker keeps the socket address.
	b.Reset()
	unix := &net.UnixAddr{Name: "/tmp/x", Net: "unix"}
	if err := writeProxyHeader(&b, "v1", unix, unix); err != nil || b.String() != "PROXY UNKNOWN\r\n" {
		t.Errorf("v1 with Unix addresses wrote %q, err %v; want PROXY UNKNOWN", b.String(), err)
	}
	w := ppFailWriter{}
	if err := writeProxyHeader(w, "v2", &net.TCPAddr{IP: net.IPv4(1, 2, 3, 4)}, &net.TCPAddr{IP: net.IPv4(1, 2, 3, 5)}); err == nil ||
		!strings.Contains(err.Error(), "1.2.3.4") || !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("write failure: err %v, want one naming the client and wrapping the cause", err)
	}
}

type ppFailWriter struct{}

func (ppFailWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestValidateProxyProtocol(t *testing.T) {
	good := []Options{
		{},
		{ProxyProtocol: ProxyProtocolOptional, SendProxyProtocol: "v1"},
		{ProxyProtocol: ProxyProtocolRequired, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, SendProxyProtocol: "v2"},
	}
	for _, o := range good {
		if err := validateProxyProtocol(o); err != nil {
			t.Errorf("%+v: %v", o, err)
		}
	}
	bad := map[string]Options{
		`"maybe"`:  {ProxyProtocol: "maybe"},
		"invalid":  {TrustedProxies: []netip.Prefix{{}}},
		"negative": {ProxyHeaderTimeout: -time.Second},
		`"v3"`:     {SendProxyProtocol: "v3"},
	}
	for want, o := range bad {
		if err := validateProxyProtocol(o); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%+v: err %v, want one containing %s", o, err, want)
		}
	}
}

func TestLogProxyHeaderError(t *testing.T) {
	var b bytes.Buffer
	log := zerolog.New(&b)
	err := &ProxyHeaderError{Peer: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 9), Port: 7}, Reason: "missing"}
	if !logProxyHeaderError(log, err) || !strings.Contains(b.String(), `"peer":"127.0.0.9:7"`) {
		t.Errorf("logged %q", b.String())
	}
	if logProxyHeaderError(log, io.EOF) {
		t.Error("io.EOF is not a PROXY header error")
	}
}
