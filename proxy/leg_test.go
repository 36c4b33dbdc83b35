package proxy_test

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mirrorproxy/mirrorproxy/proxy"
)

// pipeCore opens each leg as one end of a pipe whose other end the core
// server serves with ServeConn, carrying the client's address as the peer
// link does.
type pipeCore struct {
	core   *proxy.Server
	opened atomic.Int32
}

type carried struct {
	net.Conn
	client net.Addr
}

func (c carried) RemoteAddr() net.Addr { return c.client }

func (p *pipeCore) Open(_ context.Context, client, _ net.Addr) (net.Conn, error) {
	front, back := net.Pipe()
	p.opened.Add(1)
	if err := p.core.ServeConn(carried{Conn: back, client: client}); err != nil {
		front.Close()
		return nil, err
	}
	return front, nil
}

func (p *pipeCore) String() string { return "pipe" }

// A front whose legs go to another server (the master's core, as over the
// peer link) carries whole sessions: the handshake with the client's
// credentials, topology, publishes with confirms, gets; the core serves the
// leg as a client with the client's own address.
func TestFrontWithARemoteCore(t *testing.T) {
	core := startProxy(t, proxy.Options{})
	pc := &pipeCore{core: core.Server}
	front := startProxy(t, proxy.Options{Core: pc})

	c := front.dial(t)
	healthy(t, c)
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 1))
	if err := ch.Publish("", q.Name, false, false, amqp091.Publishing{Body: []byte("through two servers")}); err != nil {
		t.Fatal(err)
	}
	if conf := <-confirms; !conf.Ack {
		t.Fatalf("publish through the front and its remote core was nacked: %+v", conf)
	}
	m, ok, err := ch.Get(q.Name, true)
	if err != nil || !ok || string(m.Body) != "through two servers" {
		t.Fatalf("get: %v %v %q", ok, err, m.Body)
	}
	if pc.opened.Load() != 1 {
		t.Fatalf("%d legs opened for one session, want 1", pc.opened.Load())
	}
	if core.Sessions() != 1 || front.Sessions() != 1 {
		t.Fatalf("sessions: core %d, front %d, want 1 each", core.Sessions(), front.Sessions())
	}
	// The core logs the session under the client's own address, not the pipe's.
	local := c.LocalAddr().String()
	eventually(t, 5*time.Second, "the core names the client's address", func() bool {
		return core.Logs.lineWith(`"client":"`+local+`"`) != ""
	})
	c.Close()
	eventually(t, 5*time.Second, "both sessions end with the client's", func() bool {
		return core.Sessions() == 0 && front.Sessions() == 0
	})
}

// ServeConn after Close refuses the connection.
func TestServeConnAfterClose(t *testing.T) {
	srv, err := proxy.NewServer(proxy.Options{Upstream: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	a, b := net.Pipe()
	defer a.Close()
	if err := srv.ServeConn(b); !errors.Is(err, proxy.ErrServerClosed) {
		t.Fatalf("ServeConn after Close: %v, want ErrServerClosed", err)
	}
}
