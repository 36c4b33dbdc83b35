package group

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// A client of a surviving sidecar keeps its connection, channels and
// consumers across a failover: its publishes are confirmed, its consumer
// goes on receiving with increasing delivery tags, and only the consumer
// declared with x-cancel-on-ha-failover gets basic.cancel.
func TestSessionMovesWithTheMaster(t *testing.T) {
	moveSessions = true
	defer func() { moveSessions = false }()
	_, s := startGroup(t, policy(t, "ha-all", `^ha\.`, map[string]any{"ha-mode": "all"}))
	conn := dial(t, "amqp://guest:guest@"+s.clients[1]+"/")
	pub := channel(t, conn)
	for _, q := range []string{"ha.moving", "ha.cancelled"} {
		if _, err := pub.QueueDeclare(q, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Confirm(false); err != nil {
		t.Fatal(err)
	}
	sub := channel(t, conn)
	if err := sub.Qos(10, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := sub.Consume("ha.moving", "mover", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	cancelCh := channel(t, conn)
	cancelled := cancelCh.NotifyCancel(make(chan string, 1))
	keptCancel := sub.NotifyCancel(make(chan string, 1))
	if _, err := cancelCh.Consume("ha.cancelled", "canceller", false, false, false, false,
		amqp091.Table{"x-cancel-on-ha-failover": true}); err != nil {
		t.Fatal(err)
	}

	var lastTag uint64
	receive := func(body string) {
		t.Helper()
	next:
		select {
		case d := <-deliveries:
			if d.Redelivered && strings.HasPrefix(string(d.Body), "before-") && strings.HasPrefix(body, "after-") {
				// Acked just before the failover, the ack not applied on
				// the mirrors yet: it comes back, flagged (at least once).
				if d.DeliveryTag <= lastTag {
					t.Fatalf("delivery tag %d after %d: tags must keep increasing", d.DeliveryTag, lastTag)
				}
				lastTag = d.DeliveryTag
				if err := d.Ack(false); err != nil {
					t.Fatalf("ack of the redelivered %q: %v", d.Body, err)
				}
				goto next
			}
			if string(d.Body) != body {
				t.Fatalf("received %q, want %q", d.Body, body)
			}
			if d.DeliveryTag <= lastTag {
				t.Fatalf("delivery tag %d after %d: tags must keep increasing", d.DeliveryTag, lastTag)
			}
			lastTag = d.DeliveryTag
			if err := d.Ack(false); err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no delivery of %q", body)
		}
	}
	for i := 1; i <= 3; i++ {
		publishConfirmed(t, pub, "", "ha.moving", "before-"+strconv.Itoa(i))
		receive("before-" + strconv.Itoa(i))
	}

	s.kill(t, 0)
	waitFor(t, "a new master", 30*time.Second, func() bool { return s.groups[1].IsMaster() || s.groups[2].IsMaster() })

	select {
	case tag := <-cancelled:
		if tag != "canceller" {
			t.Fatalf("basic.cancel for %q, want canceller", tag)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the x-cancel-on-ha-failover consumer got no basic.cancel")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 1; i <= 3; i++ {
		body := "after-" + strconv.Itoa(i)
		dc, err := pub.PublishWithDeferredConfirmWithContext(ctx, "", "ha.moving", false, false,
			amqp091.Publishing{DeliveryMode: amqp091.Persistent, Body: []byte(body)})
		if err != nil {
			t.Fatalf("publish on the same channel after the failover: %v", err)
		}
		if ok, err := dc.WaitContext(ctx); err != nil || !ok {
			t.Fatalf("confirm of %s after the failover: %v %v", body, ok, err)
		}
		receive(body)
	}
	if conn.IsClosed() {
		t.Fatal("the client's connection was closed by the failover")
	}
	select {
	case tag := <-keptCancel:
		t.Fatalf("consumer %q without x-cancel-on-ha-failover was cancelled", tag)
	default:
	}
}

// A session with publishes in flight moves too: the front sends the
// unconfirmed ones again through the new master, which drops those it
// stored already (the old master's op reached it). Every publish is
// confirmed once, and the queue holds each message once.
func TestUnconfirmedPublishesMoveAndAreStoredOnce(t *testing.T) {
	moveSessions = true
	defer func() { moveSessions = false }()
	_, s := startGroup(t, policy(t, "ha-all", `^ha\.`, map[string]any{"ha-mode": "all"}))
	conn := dial(t, "amqp://guest:guest@"+s.clients[1]+"/")
	pub := channel(t, conn)
	if _, err := pub.QueueDeclare("ha.inflight", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := pub.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// A steady stream of publishes, at most window unconfirmed, while the
	// master's sidecar dies under it: some are in flight at the kill, at
	// every stage (sent, replicated, confirmed by the broker).
	const total, window = 3000, 200
	dcs := make([]*amqp091.DeferredConfirmation, 0, total)
	for i := range total {
		if i >= window {
			if ok, err := dcs[i-window].WaitContext(ctx); err != nil || !ok {
				t.Fatalf("publish %d: confirmed %v, %v", i-window, ok, err)
			}
		}
		if i == total/3 {
			s.kill(t, 0)
		}
		dc, err := pub.PublishWithDeferredConfirmWithContext(ctx, "", "ha.inflight", false, false,
			amqp091.Publishing{DeliveryMode: amqp091.Persistent, Body: []byte("m-" + strconv.Itoa(i))})
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		dcs = append(dcs, dc)
	}
	for i, dc := range dcs {
		ok, err := dc.WaitContext(ctx)
		if err != nil || !ok {
			t.Fatalf("publish %d: confirmed %v, %v", i, ok, err)
		}
	}
	if conn.IsClosed() {
		t.Fatal("the client's connection was closed by the failover")
	}

	// Drain: each message exactly once.
	sub := channel(t, conn)
	seen := make(map[string]int, total)
	for len(seen) < total {
		d, ok, err := sub.Get("ha.inflight", true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		seen[string(d.Body)]++
	}
	var missing, twice []string
	for i := range total {
		switch n := seen["m-"+strconv.Itoa(i)]; {
		case n == 0:
			missing = append(missing, strconv.Itoa(i))
		case n > 1:
			twice = append(twice, strconv.Itoa(i))
		}
	}
	if _, ok, _ := sub.Get("ha.inflight", true); ok {
		twice = append(twice, "(more messages after all were seen)")
	}
	if len(missing) > 0 || len(twice) > 0 {
		t.Fatalf("confirmed but missing: %v; stored twice: %v", missing, twice)
	}
	var dropped int64
	for i := 1; i < 3; i++ {
		dropped += s.groups[i].Deduplicated()
	}
	t.Logf("%d publishes confirmed and stored once; %d re-sent ones were dropped as stored already", total, dropped)
}

// The case de-duplication exists for, made certain: a mirror's broker is
// frozen, so the master withholds every confirm (an op is stable only when
// every member applied it), while the other mirror — the front's own node —
// applies the publishes. The master's sidecar dies then: every one of them
// is sent again through the new master, which holds them all already.
func TestResentPublishesTheNewMasterHoldsAreDropped(t *testing.T) {
	moveSessions = true
	defer func() { moveSessions = false }()
	env, s := startGroup(t, policy(t, "ha-all", `^ha\.`, map[string]any{"ha-mode": "all"}))
	conn := dial(t, "amqp://guest:guest@"+s.clients[1]+"/")
	pub := channel(t, conn)
	if _, err := pub.QueueDeclare("ha.resent", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := pub.Confirm(false); err != nil {
		t.Fatal(err)
	}
	publishConfirmed(t, pub, "", "ha.resent", "warm-1", "warm-2")

	if err := env.Nodes[2].Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.Nodes[2].Unpause(); err != nil {
			t.Errorf("unpausing node 2's broker: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 50
	base := s.groups[1].stored.Len()
	var dcs []*amqp091.DeferredConfirmation
	for i := range n {
		dc, err := pub.PublishWithDeferredConfirmWithContext(ctx, "", "ha.resent", false, false,
			amqp091.Publishing{DeliveryMode: amqp091.Persistent, Body: []byte("r-" + strconv.Itoa(i))})
		if err != nil {
			t.Fatal(err)
		}
		dcs = append(dcs, dc)
	}
	waitFor(t, "node 1 to store the publishes", 20*time.Second, func() bool { return s.groups[1].stored.Len() >= base+n })
	confirmedEarly := 0
	for _, dc := range dcs {
		if dc.Acked() {
			confirmedEarly++
		}
	}
	s.kill(t, 0)

	for i, dc := range dcs {
		if ok, err := dc.WaitContext(ctx); err != nil || !ok {
			t.Fatalf("publish %d: confirmed %v, %v", i, ok, err)
		}
	}
	if conn.IsClosed() {
		t.Fatal("the client's connection was closed by the failover")
	}
	sub := channel(t, conn)
	seen := map[string]int{}
	for {
		d, ok, err := sub.Get("ha.resent", true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		seen[string(d.Body)]++
	}
	for _, b := range []string{"warm-1", "warm-2"} {
		if seen[b] != 1 {
			t.Errorf("%s stored %d times, want once", b, seen[b])
		}
	}
	for i := range n {
		if b := "r-" + strconv.Itoa(i); seen[b] != 1 {
			t.Errorf("%s stored %d times, want once", b, seen[b])
		}
	}
	dropped := s.groups[1].Deduplicated() + s.groups[2].Deduplicated()
	if want := int64(n - confirmedEarly); dropped < want {
		t.Errorf("%d re-sent publishes dropped as stored already, want at least %d (%d confirmed before the kill)", dropped, want, confirmedEarly)
	}
	t.Logf("%d publishes unconfirmed at the kill (%d confirmed before it); %d re-sent ones dropped as stored already", n-confirmedEarly, confirmedEarly, dropped)
}
