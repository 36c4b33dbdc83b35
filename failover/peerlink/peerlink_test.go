package peerlink

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/mirrorproxy/mirrorproxy/gm"
)

var testAuth = gm.AuthConfig{Secret: []byte("0123456789abcdef-peerlink")}

// acceptor is the accepting sidecar's side: a listener shared by purposes,
// as gm's ring listener is, handing "peer" connections to Serve.
type acceptor struct {
	ln      net.Listener
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	streams chan net.Conn
	refused chan error
}

func startAcceptor(t *testing.T, self string, auth gm.AuthConfig) *acceptor {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &acceptor{ln: ln, streams: make(chan net.Conn, 16), refused: make(chan error, 16)}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				conn, peer, purpose, err := gm.AuthAcceptAny(c, auth, self, "gm", Purpose)
				if err != nil {
					a.refused <- err
					return
				}
				if purpose != Purpose {
					conn.Close()
					return
				}
				Serve(a.ctx, conn, peer, Handler{
					Session: func(s net.Conn) { a.streams <- s },
					Request: func(_ context.Context, peer string, req []byte) ([]byte, error) {
						if string(req) == "refuse" {
							return nil, errors.New("refused for " + peer)
						}
						return append([]byte(peer+" asked: "), req...), nil
					},
				}, zerolog.Nop())
			}()
		}
	}()
	t.Cleanup(a.close)
	return a
}

func (a *acceptor) close() {
	a.cancel()
	a.ln.Close()
	a.wg.Wait()
	for {
		select {
		case s := <-a.streams:
			s.Close()
		default:
			return
		}
	}
}

func (a *acceptor) stream(t *testing.T) net.Conn {
	t.Helper()
	select {
	case s := <-a.streams:
		return s
	case err := <-a.refused:
		t.Fatalf("the acceptor refused the link: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("no stream reached the acceptor")
	}
	return nil
}

func TestSessionsShareOneLinkAndCarryTheClientAddress(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	a := startAcceptor(t, "node-1", testAuth)
	d := NewDialer(Config{Self: "node-2", Auth: testAuth, Resolve: func(id string) string {
		if id == "node-1" {
			return a.ln.Addr().String()
		}
		return ""
	}})
	defer d.Close()
	ctx := context.Background()

	clients := []*net.TCPAddr{{IP: net.IPv4(10, 0, 0, 7), Port: 40001}, {IP: net.IPv4(10, 0, 0, 8), Port: 40002}}
	for i, client := range clients {
		c, err := d.Open(ctx, "node-1", client)
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		defer c.Close()
		s := a.stream(t)
		defer s.Close()
		if got := s.RemoteAddr().String(); got != client.String() {
			t.Fatalf("stream %d: RemoteAddr %q, want the client's %q", i, got, client)
		}
		if _, ok := s.RemoteAddr().(*net.TCPAddr); !ok {
			t.Fatalf("stream %d: RemoteAddr is %T, want *net.TCPAddr (a PROXY header to the broker needs it)", i, s.RemoteAddr())
		}
		// Both directions carry bytes, and streams do not mix.
		msg := []byte{'A', 'M', 'Q', 'P', 0, 0, 9, byte(i)}
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(s, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("stream %d: read %v, %v; want %v", i, got, err, msg)
		}
		if _, err := s.Write([]byte("reply")); err != nil {
			t.Fatal(err)
		}
		back := make([]byte, 5)
		if _, err := io.ReadFull(c, back); err != nil || string(back) != "reply" {
			t.Fatalf("stream %d: reply %q, %v", i, back, err)
		}
	}
	d.mu.Lock()
	n := len(d.links)
	d.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d links to one peer, want 1", n)
	}
}

func TestWrongSecretIsRefused(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	a := startAcceptor(t, "node-1", testAuth)
	d := NewDialer(Config{Self: "intruder", Auth: gm.AuthConfig{Secret: []byte("not-the-group-secret!")},
		Resolve: func(string) string { return a.ln.Addr().String() }})
	defer d.Close()
	_, err := d.Open(context.Background(), "node-1", nil)
	if !errors.Is(err, gm.ErrAuth) {
		t.Fatalf("open with a wrong secret: %v, want gm.ErrAuth", err)
	}
	select {
	case err := <-a.refused:
		if !errors.Is(err, gm.ErrAuth) {
			t.Fatalf("acceptor: %v, want gm.ErrAuth", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the acceptor did not refuse the intruder")
	}
}

func TestWrongPeerAnswering(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	a := startAcceptor(t, "node-3", testAuth)
	d := NewDialer(Config{Self: "node-2", Auth: testAuth, Resolve: func(string) string { return a.ln.Addr().String() }})
	defer d.Close()
	if _, err := d.Open(context.Background(), "node-1", nil); err == nil {
		t.Fatal("a link to node-1 answered by node-3 was accepted")
	}
}

func TestLinkRedialledAfterItBroke(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	a := startAcceptor(t, "node-1", testAuth)
	d := NewDialer(Config{Self: "node-2", Auth: testAuth, Resolve: func(string) string { return a.ln.Addr().String() }})
	defer d.Close()
	c, err := d.Open(context.Background(), "node-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	a.stream(t).Close()
	c.Close()
	d.mu.Lock()
	l := d.links["node-1"]
	d.mu.Unlock()
	l.mu.Lock()
	l.sess.Close() // the link breaks
	l.mu.Unlock()
	c, err = d.Open(context.Background(), "node-1", nil)
	if err != nil {
		t.Fatalf("open after the link broke: %v", err)
	}
	defer c.Close()
	a.stream(t).Close()
}

func TestPreamble(t *testing.T) {
	for _, addr := range []string{"", "127.0.0.1:5672", "[::1]:40000"} {
		got, err := readPreamble(bytes.NewReader(appendPreamble(nil, addr)))
		if err != nil || got != addr {
			t.Fatalf("round trip of %q: %q, %v", addr, got, err)
		}
	}
	for name, b := range map[string][]byte{
		"empty":          nil,
		"bad version":    {9, 0, 0},
		"short address":  {1, 0, 5, 'a'},
		"oversized addr": {1, 0xff, 0xff},
	} {
		if _, err := readPreamble(bytes.NewReader(b)); !errors.Is(err, ErrBadPreamble) {
			t.Fatalf("%s: %v, want ErrBadPreamble", name, err)
		}
	}
}

func TestClosedDialer(t *testing.T) {
	d := NewDialer(Config{Self: "node-2", Auth: testAuth})
	d.Close()
	if _, err := d.Open(context.Background(), "node-1", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("open after close: %v, want ErrClosed", err)
	}
}

func TestRequestsAreAnsweredBesideSessions(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	a := startAcceptor(t, "node-1", testAuth)
	d := NewDialer(Config{Self: "node-2", Auth: testAuth, Resolve: func(string) string { return a.ln.Addr().String() }})
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.Open(ctx, "node-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a.stream(t).Close()
	ans, err := d.Request(ctx, "node-1", []byte("leave"))
	if err != nil || string(ans) != "node-2 asked: leave" {
		t.Fatalf("request: %q, %v; want the handler's answer naming the authenticated peer", ans, err)
	}
	_, err = d.Request(ctx, "node-1", []byte("refuse"))
	var re *RemoteError
	if !errors.As(err, &re) || re.Text != "refused for node-2" {
		t.Fatalf("refused request: %v, want a RemoteError with the handler's text", err)
	}
}
