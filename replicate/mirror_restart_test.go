package replicate

import (
	"testing"
	"time"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
	"github.com/mirrorproxy/mirrorproxy/testenv"
)

// TestMirrorRestartDiscards: a mirror that starts again (a new sidecar run)
// finds its broker's copy holding what the earlier run held — requeued
// when its connections closed, and possibly acked on the master since. It
// discards that when the queue is declared to it, and starts empty
// (issue 4: "A restarted mirror discards what it held before"); only
// messages published after it holds them.
func TestMirrorRestartDiscards(t *testing.T) {
	if testing.Short() {
		t.Skip("starts RabbitMQ brokers")
	}
	checkLeaks(t)
	node := testenv.Start(t, testenv.Options{Nodes: 1}).Nodes[0]
	s := &script{t: t}
	s.topology(&amqp.QueueDeclare{Queue: "restart.q", Durable: true})
	for range 5 {
		s.publish("", "restart.q", amqp.Properties{DeliveryMode: amqp.Persistent}, []byte("before"))
	}
	first := newMirror(t, node.URL, MirrorConfig{})
	r := &recorder{}
	s.apply(first, r, 0, len(s.ops))
	r.check(t, len(s.ops))
	waitFor(t, "the first run to hold 5 copies", 30*time.Second, func() bool { return first.Held("/", "restart.q") == 5 })
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	c := dialClient(t, node.URL)
	if n := c.count("restart.q"); n != 5 {
		t.Fatalf("after the first run closed the broker's copy holds %d ready, want the 5 it held", n)
	}

	second := newMirror(t, node.URL, MirrorConfig{})
	from := len(s.ops)
	s.topology(&amqp.QueueDeclare{Queue: "restart.q", Durable: true}) // the master's replay
	s.publish("", "restart.q", amqp.Properties{DeliveryMode: amqp.Persistent}, []byte("after"))
	r2 := &recorder{}
	for i := from; i < len(s.ops); i++ {
		second.Apply(s.ops[i], r2.done(i-from))
	}
	r2.check(t, len(s.ops)-from)
	waitFor(t, "the second run to hold its one copy", 30*time.Second, func() bool { return second.Held("/", "restart.q") == 1 })
	if err := second.Close(); err != nil {
		t.Fatal(err)
	}
	got := c.drain("restart.q", 1)
	if len(got) != 1 || string(got[0].body) != "after" {
		t.Fatalf("the copy holds %d messages, want only the one published after the restart", len(got))
	}
	if n := c.count("restart.q"); n != 0 {
		t.Fatalf("%d more messages in the copy", n)
	}
}
