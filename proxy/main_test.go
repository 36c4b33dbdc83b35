package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/mirrorproxy/mirrorproxy/proxy"
	"github.com/mirrorproxy/mirrorproxy/testenv"
	// The docker backend, for MIRRORPROXY_TESTENV=docker.
	_ "github.com/mirrorproxy/mirrorproxy/testenv/docker"
)

// broker is the package's shared RabbitMQ node, started once in TestMain
// (nil with -short).
var broker *testenv.Node

func TestMain(m *testing.M) {
	code := func() int {
		flag.Parse()
		if !testing.Short() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			g, err := testenv.StartGroup(ctx, testenv.Options{Nodes: 1})
			cancel()
			if err != nil {
				fmt.Fprintln(os.Stderr, "starting the test broker:", err)
				return 1
			}
			defer g.Close()
			broker = g.Nodes[0]
		}
		return m.Run()
	}()
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreCurrent()); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func needBroker(t testing.TB) *testenv.Node {
	t.Helper()
	if broker == nil {
		t.Skip("needs a RabbitMQ broker (not started with -short)")
	}
	return broker
}

// logBuffer collects a server's JSON log lines for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// lineWith returns the first log line containing every one of parts.
func (l *logBuffer) lineWith(parts ...string) string {
next:
	for _, line := range strings.Split(l.String(), "\n") {
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue next
			}
		}
		return line
	}
	return ""
}

// testProxy is a Server on a loopback port.
type testProxy struct {
	*proxy.Server
	Addr string
	Logs *logBuffer
}

// startProxy serves opts (Upstream defaults to the shared broker) until the
// test ends.
func startProxy(t testing.TB, opts proxy.Options) *testProxy {
	t.Helper()
	if opts.Upstream == "" {
		opts.Upstream = needBroker(t).AMQPAddr
	}
	logs := &logBuffer{}
	opts.Logger = zerolog.New(logs).Level(zerolog.DebugLevel)
	srv, err := proxy.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, proxy.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		if t.Failed() {
			t.Logf("proxy log:\n%s", logs.String())
		}
	})
	return &testProxy{Server: srv, Addr: ln.Addr().String(), Logs: logs}
}

func (p *testProxy) URL() string { return "amqp://guest:guest@" + p.Addr + "/" }

// dial connects amqp091-go through the proxy.
func (p *testProxy) dial(t testing.TB) *amqp091.Connection {
	t.Helper()
	c, err := amqp091.Dial(p.URL())
	if err != nil {
		t.Fatalf("dial through the proxy: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// healthy proves a connection still works: a round trip through a queue.
func healthy(t testing.TB, c *amqp091.Connection) {
	t.Helper()
	ch, err := c.Channel()
	if err != nil {
		t.Fatalf("healthy session: channel: %v", err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatalf("healthy session: declare: %v", err)
	}
	if err := ch.Publish("", q.Name, false, false, amqp091.Publishing{Body: []byte("ping")}); err != nil {
		t.Fatalf("healthy session: publish: %v", err)
	}
	eventually(t, 5*time.Second, "the message comes back", func() bool {
		m, ok, err := ch.Get(q.Name, true)
		if err != nil {
			t.Fatalf("healthy session: get: %v", err)
		}
		return ok && string(m.Body) == "ping"
	})
}

// startOwnBroker starts a broker for one test (for tests that hurt it).
func startOwnBroker(t testing.TB) *testenv.Node {
	t.Helper()
	return testenv.Start(t, testenv.Options{Nodes: 1}).Nodes[0]
}
