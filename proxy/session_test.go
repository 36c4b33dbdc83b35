package proxy_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mirrorproxy/mirrorproxy/proxy"
	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// The proxy sends heartbeats to an idle client on its own, at the client's
// interval, even though it asked the broker for a much longer one.
func TestHeartbeatsToAnIdleClient(t *testing.T) {
	p := startProxy(t, proxy.Options{UpstreamHeartbeat: 60 * time.Second})
	c := dialRaw(t, p.Addr)
	c.open(1, nil)
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for n := 0; n < 2; {
		f, err := c.r.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for heartbeats (got %d): %v", n, err)
		}
		if f.Type == amqp.FrameHeartbeat {
			n++
		}
		// Keep the proxy from closing us: heartbeat back.
		c.send(amqp.HeartbeatFrame)
	}
}

// A client that stops sending (not even heartbeats) is closed after two
// intervals, and the broker's connection goes with it.
func TestSilentClientIsClosed(t *testing.T) {
	p := startProxy(t, proxy.Options{})
	bystander := p.dial(t)
	c := dialRaw(t, p.Addr)
	c.open(1, nil)
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, c.conn); err != nil && !isReset(err) {
		t.Fatalf("the proxy did not close a silent client: %v", err)
	}
	eventually(t, 5*time.Second, "a log line about missed heartbeats", func() bool {
		return p.Logs.lineWith("missed heartbeats from client", `"client":"127.0.0.1:`) != ""
	})
	eventually(t, 5*time.Second, "the session to end", func() bool { return p.Sessions() == 1 })
	healthy(t, bystander)
}

// frame_max is negotiated per side: a client allowed larger frames than the
// broker has its bodies split on the way in; a client with smaller frames
// than the broker gets the broker's bodies split on the way out. Bodies
// arrive byte-identical.
func TestBodiesAreRechunkedBetweenFrameMaxes(t *testing.T) {
	p := startProxy(t, proxy.Options{FrameMax: 1 << 20}) // broker: 131072
	conn, err := amqp091.DialConfig(p.URL(), amqp091.Config{FrameSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got := conn.Config.FrameSize; got != 1<<20 {
		t.Fatalf("client negotiated frame_max %d, want the proxy's 1 MiB", got)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("rechunk-"+t.Name(), false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = ch.QueueDelete(q.Name, false, false, false) }() // best effort: the test's own broker
	body := make([]byte, 3<<20+17)
	rand.Read(body)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", q.Name, false, false, amqp091.Publishing{Body: body})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := dc.WaitContext(context.Background()); !ok || err != nil {
		t.Fatalf("publish of 1 MiB frames not confirmed: %v", err)
	}

	// A raw client with frame_max 4096 reads it back: every frame it gets
	// must fit its frame_max.
	c := dialRaw(t, p.Addr)
	c.send(amqp.ProtocolHeader[:])
	c.expect("connection.start")
	c.sendMethod(0, &amqp.ConnectionStartOk{Mechanism: "PLAIN", Response: "\x00guest\x00guest", Locale: "en_US"})
	tune := c.expect("connection.tune").(*amqp.ConnectionTune)
	c.sendMethod(0, &amqp.ConnectionTuneOk{ChannelMax: tune.ChannelMax, FrameMax: 4096})
	c.sendMethod(0, &amqp.ConnectionOpen{VirtualHost: "/"})
	c.expect("connection.open-ok")
	c.sendMethod(1, &amqp.ChannelOpen{})
	c.expect("channel.open-ok")
	c.sendMethod(1, &amqp.BasicGet{Queue: q.Name, NoAck: true})
	c.expect("basic.get-ok")
	var got []byte
	for len(got) < len(body) {
		f, err := c.r.ReadFrame()
		if err != nil {
			t.Fatalf("reading the body: %v", err)
		}
		if len(f.Raw) > 4096 {
			t.Fatalf("a %d-octet frame reached a client with frame_max 4096", len(f.Raw))
		}
		if f.Type == amqp.FrameBody {
			got = append(got, f.Payload...)
		}
	}
	if !bytes.Equal(got, body) {
		t.Fatal("the body changed on the way")
	}
}

// Shutdown lets a session finish within the grace, then closes the rest
// with 320 and the broker's wording.
func TestShutdownClosesRemainingSessionsWith320(t *testing.T) {
	p := startProxy(t, proxy.Options{ShutdownGrace: 300 * time.Millisecond})
	c := dialRaw(t, p.Addr)
	c.open(0, nil)
	done := make(chan error, 1)
	go func() { done <- p.Shutdown(context.Background()) }()
	cl := c.closed()
	if cl == nil || cl.ReplyCode != amqp.ConnectionForced || !strings.Contains(cl.ReplyText, "shutdown") {
		t.Fatalf("got %s, want connection.close 320 naming the shutdown", describe(methodOrNil(cl)))
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := p.Sessions(); n != 0 {
		t.Fatalf("%d sessions left after Shutdown", n)
	}
	if _, err := amqp091.Dial(p.URL()); err == nil {
		t.Fatal("a shut-down server accepted a client")
	}
}

// A session that ends by itself during the grace is not forced.
func TestShutdownWaitsForSessionsThatFinish(t *testing.T) {
	p := startProxy(t, proxy.Options{ShutdownGrace: 30 * time.Second})
	conn := p.dial(t)
	done := make(chan error, 1)
	go func() { done <- p.Shutdown(context.Background()) }()
	healthy(t, conn) // still served during the grace
	if err := conn.Close(); err != nil {
		t.Fatalf("a clean close during the grace failed: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Shutdown did not return once the last session closed")
	}
}
