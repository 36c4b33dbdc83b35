package compat

import (
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/proxy"
)

// testProxy is a proxy.Server on a loopback port in front of the broker.
type testProxy struct {
	srv  *proxy.Server
	addr string
	logs *logBuffer
	ln   *countingListener
}

// accepted counts the client connections the proxy accepted: a proxied
// leg that made none did not test the proxy.
func (p *testProxy) accepted() int64 { return p.ln.n.Load() }

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// proxyLeg starts a proxy in front of upstream for the rest of the test.
func proxyLeg(t *testing.T, upstream string) leg {
	t.Helper()
	logs := &logBuffer{}
	srv, err := proxy.NewServer(proxy.Options{
		Upstream: upstream,
		Logger:   zerolog.New(logs).Level(zerolog.DebugLevel),
	})
	if err != nil {
		t.Fatalf("proxy.NewServer: %v", err)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: tcp}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, proxy.ErrServerClosed) {
			t.Errorf("proxy Serve returned %v, want ErrServerClosed", err)
		}
	})
	p := &testProxy{srv: srv, addr: ln.Addr().String(), logs: logs, ln: ln}
	return leg{name: "proxy", addr: p.addr, proxy: p}
}

// logBuffer keeps a proxy's JSON log lines for failure messages.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// tail returns the last n lines.
func (l *logBuffer) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	lines := strings.Split(strings.TrimRight(l.b.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
