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
