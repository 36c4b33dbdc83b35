package proxy_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mirrorproxy/mirrorproxy/proxy"
	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// ringStub is a Replicator whose ops become stable when the test says so.
type ringStub struct {
	mu      sync.Mutex
	id      uint64
	ticket  proxy.Ticket
	pubs    int
	watches map[int]func(proxy.Ticket)
	n       int
}

func (r *ringStub) NextID() uint64 { r.mu.Lock(); defer r.mu.Unlock(); r.id++; return r.id }
func (r *ringStub) next() proxy.Ticket {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ticket++
	return r.ticket
}
func (r *ringStub) Publish(p proxy.Publish) (proxy.Ticket, error) {
	r.mu.Lock()
	r.pubs++
	r.mu.Unlock()
	return r.next(), nil
}
func (r *ringStub) Settle(string, string, []uint64, bool) (proxy.Ticket, error) { return r.next(), nil }
func (r *ringStub) Topology(string, []byte) (proxy.Ticket, error)               { return r.next(), nil }
func (r *ringStub) Watch(fn func(proxy.Ticket)) func() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.watches == nil {
		r.watches = map[int]func(proxy.Ticket){}
	}
	r.n++
	k := r.n
	r.watches[k] = fn
	return func() { r.mu.Lock(); delete(r.watches, k); r.mu.Unlock() }
}

// stableAll makes every op so far stable.
func (r *ringStub) stableAll() {
	r.mu.Lock()
	t := r.ticket
	ws := make([]func(proxy.Ticket), 0, len(r.watches))
	for _, w := range r.watches {
		ws = append(ws, w)
	}
	r.mu.Unlock()
	for _, w := range ws {
		w(t)
	}
}

func TestMasterCoreOnARealBroker(t *testing.T) {
	b := needBroker(t)
	ring := &ringStub{}
	p := startProxy(t, proxy.Options{Replicator: ring})
	conn := p.dial(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("core-e2e", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = ch.QueueDelete(q.Name, false, false, false) }() // best effort: the test's own broker
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	headers := amqp091.Table{"app": "kept"}
	dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", q.Name, false, false,
		amqp091.Publishing{Headers: headers, Body: []byte("replicated")})
	if err != nil {
		t.Fatal(err)
	}
	// The broker has it (stamped) but the ring does not say stable: no confirm.
	direct, err := amqp091.Dial(b.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	dch, _ := direct.Channel()
	eventually(t, 5*time.Second, "the broker holds the message", func() bool {
		qi, err := dch.QueueDeclarePassive(q.Name, false, false, false, false, nil)
		return err == nil && qi.Messages == 1
	})
	select {
	case <-dc.Done():
		t.Fatal("confirmed before the ring said stable")
	default:
	}
	ring.stableAll()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if ok, err := dc.WaitContext(ctx); !ok || err != nil {
		t.Fatalf("no confirm after the ring said stable: %v %v", ok, err)
	}

	// Through the broker directly the stamp is there; through the proxy it is not.
	m, ok, err := dch.Get(q.Name, false)
	if err != nil || !ok {
		t.Fatalf("direct get: %v %v", ok, err)
	}
	if _, has := m.Headers[amqp.MirrorIDHeader]; !has || m.Headers["app"] != "kept" {
		t.Fatalf("the broker's copy has headers %v, want x-mirror-id and app", m.Headers)
	}
	if err := m.Nack(false, true); err != nil {
		t.Fatal(err)
	}
	// The requeue travels on the direct connection: the proxy's get may
	// come first and find the queue empty.
	var got amqp091.Delivery
	eventually(t, 5*time.Second, "the requeued message through the proxy", func() bool {
		var err error
		got, ok, err = ch.Get(q.Name, true)
		if err != nil {
			t.Fatalf("get through the proxy: %v", err)
		}
		return ok
	})
	if _, has := got.Headers[amqp.MirrorIDHeader]; has || got.Headers["app"] != "kept" || len(got.Headers) != 1 {
		t.Fatalf("the consumer sees headers %v, want exactly the publisher's", got.Headers)
	}
	if string(got.Body) != "replicated" {
		t.Fatalf("body %q", got.Body)
	}
}

// A master's core whose authority fails (its lease lapsed, a newer view
// names another master) passes nothing its broker said on: the confirm of
// a publish the ring made stable is withheld, the broker side is closed and
// the client told with 320 why.
func TestMasterCoreWithoutAuthority(t *testing.T) {
	needBroker(t)
	ring := &ringStub{}
	p := startProxy(t, proxy.Options{Replicator: ring})
	var lost atomic.Bool
	p.SetRoute(proxy.Route{Replicator: ring, Authority: func() error {
		if lost.Load() {
			return errors.New("the lease lapsed (test)")
		}
		return nil
	}})
	conn := p.dial(t)
	closed := conn.NotifyClose(make(chan *amqp091.Error, 1))
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	publish := func(body string) *amqp091.DeferredConfirmation {
		dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", q.Name, false, false, amqp091.Publishing{Body: []byte(body)})
		if err != nil {
			t.Fatal(err)
		}
		return dc
	}
	ring.stableAll() // the declare
	before := publish("before")
	eventually(t, 5*time.Second, "the ring to take the first publish", func() bool { ring.mu.Lock(); defer ring.mu.Unlock(); return ring.pubs == 1 })
	ring.stableAll()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if ok, err := before.WaitContext(ctx); !ok || err != nil {
		t.Fatalf("no confirm while the node is master: %v %v", ok, err)
	}

	after := publish("after")
	eventually(t, 5*time.Second, "the ring to take the second publish", func() bool { ring.mu.Lock(); defer ring.mu.Unlock(); return ring.pubs == 2 })
	lost.Store(true)
	ring.stableAll()
	select {
	case e := <-closed:
		if e == nil || e.Code != amqp091.ConnectionForced || !strings.Contains(e.Reason, "no longer the master") {
			t.Fatalf("the connection closed with %v, want 320 naming the lost mastership", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the session went on after the node stopped being master")
	}
	if after.Acked() {
		t.Fatal("a confirm went out after the node stopped being master")
	}
	if !strings.Contains(p.Logs.String(), "may no longer confirm or deliver as the master") {
		t.Errorf("no log line says why the session's broker side was closed")
	}
}

// DropRemoteLegs (a front whose master changed) ends the sessions whose leg
// is not this server's own core: without Resume the client is closed with
// 320 and reconnects; a session on the local core is kept.
func TestDropRemoteLegs(t *testing.T) {
	needBroker(t)
	remote := startProxy(t, proxy.Options{})
	ring := &ringStub{}
	local := startProxy(t, proxy.Options{Replicator: ring})

	rc := remote.dial(t)
	rclosed := rc.NotifyClose(make(chan *amqp091.Error, 1))
	lc := local.dial(t)
	lclosed := lc.NotifyClose(make(chan *amqp091.Error, 1))
	eventually(t, 5*time.Second, "both sessions open", func() bool {
		return remote.Sessions() == 1 && local.Sessions() == 1
	})
	if n := local.DropRemoteLegs(); n != 0 {
		t.Fatalf("dropped %d sessions on the local core, want 0", n)
	}
	if n := remote.DropRemoteLegs(); n != 1 {
		t.Fatalf("dropped %d sessions with a plain upstream, want 1", n)
	}
	select {
	case e := <-rclosed:
		if e == nil || e.Code != amqp091.ConnectionForced {
			t.Fatalf("the remote session closed with %v, want 320", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the session whose leg was dropped is still open")
	}
	select {
	case e := <-lclosed:
		t.Fatalf("the session on the local core closed: %v", e)
	default:
	}
	if _, err := lc.Channel(); err != nil {
		t.Fatalf("the session on the local core does not serve: %v", err)
	}
}
