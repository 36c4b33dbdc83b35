package replicate

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
	"github.com/mirrorproxy/mirrorproxy/testenv"
)

// testMirrorTTL: held copies past x-message-ttl or their expiration are
// requeued by the mirror, and the mirror's broker expires them itself, so
// the dead-letter queue holds them with x-death reason "expired", as on the
// reference broker where they expired unconsumed.
func testMirrorTTL(t *testing.T, refNode, mirNode *testenv.Node) {
	checkLeaks(t)
	s := &script{t: t}
	s.topology(&amqp.ExchangeDeclare{Exchange: "t.dlx", Type: "fanout"})
	s.topology(&amqp.QueueDeclare{Queue: "t.dead"})
	s.topology(&amqp.QueueBind{Queue: "t.dead", Exchange: "t.dlx"})
	s.topology(&amqp.QueueDeclare{Queue: "t.q", Arguments: amqp.Table{
		{Key: "x-message-ttl", Value: int32(300)}, {Key: "x-dead-letter-exchange", Value: "t.dlx"}}})
	s.topology(&amqp.QueueDeclare{Queue: "t.pm", Arguments: amqp.Table{{Key: "x-dead-letter-exchange", Value: "t.dlx"}}})
	for i := range 3 {
		s.publish("", "t.q", amqp.Properties{MessageID: fmt.Sprint("q", i)}, []byte(fmt.Sprint("queue ttl ", i)))
	}
	s.publish("", "t.pm", amqp.Properties{Expiration: "200"}, []byte("expires"))
	s.publish("", "t.pm", amqp.Properties{}, []byte("stays"))

	mir := newMirror(t, mirNode.URL, MirrorConfig{})
	rec := &recorder{}
	s.apply(mir, rec, 0, len(s.ops))
	rec.check(t, len(s.ops))
	ref := dialClient(t, refNode.URL)
	s.replay(ref, 0, len(s.ops))

	waitFor(t, "expired copies dead-lettered on the mirror", 30*time.Second, func() bool {
		return mir.Held("/", "t.dead") == 4 && mir.Held("/", "t.q") == 0 && mir.Held("/", "t.pm") == 1
	})
	waitFor(t, "expired messages dead-lettered on the reference", 30*time.Second, func() bool { return ref.count("t.dead") == 4 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := mir.Release(ctx); err != nil {
		t.Fatal(err)
	}
	mc := dialClient(t, mirNode.URL)
	for _, q := range []string{"t.q", "t.pm", "t.dead"} {
		n := ref.count(q)
		if m := mc.count(q); m != n {
			t.Fatalf("%s: reference holds %d, mirror %d", q, n, m)
		}
		r, m := ref.drain(q, n), mc.drain(q, n)
		if q == "t.dead" {
			// Dead-lettering order across two source queues depends on
			// timing on each broker; compare per source queue.
			r, m = bySource(t, r), bySource(t, m)
		}
		compare(t, q, r, m)
		if q == "t.dead" {
			for _, msg := range m {
				if reason := deathReason(t, msg.header); reason != "expired" {
					t.Fatalf("mirror's dead-lettered copy has x-death reason %q, want expired", reason)
				}
			}
		}
		ref.rpc(&amqp.QueueDelete{Queue: q})
		mc.rpc(&amqp.QueueDelete{Queue: q})
	}
}

// bySource orders dead-lettered messages by their source queue, stably.
func bySource(t *testing.T, msgs []message) []message {
	var a, b []message
	for _, m := range msgs {
		if strings.Contains(string(m.body), "queue ttl") {
			a = append(a, m)
		} else {
			b = append(b, m)
		}
	}
	return append(a, b...)
}

// testMirrorDoneWaitsForConfirm: with the mirror's broker blocking
// publishers (memory alarm), a publish op is not reported; it is once the
// alarm clears. done callbacks come once each, in op order.
func testMirrorDoneWaitsForConfirm(t *testing.T, _, mirNode *testenv.Node) {
	checkLeaks(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := &script{t: t}
	s.topology(&amqp.QueueDeclare{Queue: "b.q"})
	for i := range 5 {
		s.publish("", "b.q", amqp.Properties{}, []byte(fmt.Sprint("m", i)))
	}
	mir := newMirror(t, mirNode.URL, MirrorConfig{})
	rec := &recorder{}
	s.apply(mir, rec, 0, 2) // declare and one publish, unblocked
	rec.check(t, 2)

	if _, err := mirNode.Ctl(ctx, "set_vm_memory_high_watermark", "0"); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if _, err := mirNode.Ctl(context.Background(), "set_vm_memory_high_watermark", "0.4"); err != nil {
				t.Error(err)
			}
		}
	}
	defer restore()
	s.apply(mir, rec, 2, len(s.ops))
	waitFor(t, "the mirror's publishing connection blocked", 30*time.Second, func() bool {
		out, err := mirNode.Ctl(ctx, "list_connections", "client_properties", "state")
		return err == nil && strings.Contains(out, "mirrorproxy mirror") && strings.Contains(out, "\tblocked")
	})
	if n := rec.count(); n != 2 {
		t.Fatalf("%d ops reported while the broker blocks publishes, want 2", n)
	}
	restore()
	rec.check(t, len(s.ops))
	for i, err := range rec.errs {
		if err != nil {
			t.Fatalf("op %d: %v", i, err)
		}
	}
	waitFor(t, "copies held", 30*time.Second, func() bool { return mir.Held("/", "b.q") == 5 })
	if err := mir.Close(); err != nil {
		t.Fatal(err)
	}
	mc := dialClient(t, mirNode.URL)
	mc.rpc(&amqp.QueueDelete{Queue: "b.q"})
}

// testMirrorBounds: a shadow consumer holds at most MaxHeld copies (the
// rest stay ready in the broker), and at most MaxPending dispositions wait
// for copies; Release brings every copy back in publish order.
func testMirrorBounds(t *testing.T, _, mirNode *testenv.Node) {
	checkLeaks(t)
	s := &script{t: t}
	s.topology(&amqp.QueueDeclare{Queue: "n.q"})
	var ids []uint64
	for i := range 10 {
		ids = append(ids, s.publish("", "n.q", amqp.Properties{}, []byte(fmt.Sprint("m", i))))
	}
	mir := newMirror(t, mirNode.URL, MirrorConfig{MaxHeld: 3, MaxPending: 4})
	rec := &recorder{}
	s.apply(mir, rec, 0, len(s.ops))
	rec.check(t, len(s.ops))
	waitFor(t, "3 copies held", 30*time.Second, func() bool { return mir.Held("/", "n.q") == 3 })
	// Acks of 6 copies not delivered yet (the consumer is full): they wait,
	// and past MaxPending the oldest are forgotten (their copies stay).
	s.dispose(OpAck, "n.q", ids[9], ids[8], ids[7], ids[6], ids[5], ids[4])
	s.apply(mir, rec, len(s.ops)-1, len(s.ops))
	rec.check(t, len(s.ops))
	if n := mir.pendingCount("/", "n.q"); n != 4 {
		t.Fatalf("%d dispositions wait, want MaxPending=4", n)
	}
	if n := mir.Held("/", "n.q"); n != 3 {
		t.Fatalf("%d copies held, want MaxHeld=3", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := mir.Release(ctx); err != nil {
		t.Fatal(err)
	}
	mc := dialClient(t, mirNode.URL)
	got := mc.drain("n.q", 10)
	for i, m := range got {
		if want := fmt.Sprint("m", i); string(m.body) != want {
			t.Fatalf("after release message %d is %q, want %q (publish order)", i, m.body, want)
		}
	}
	mc.rpc(&amqp.QueueDelete{Queue: "n.q"})
}

// testMirrorTopologyFailure: a topology op the mirror's broker refuses
// (406 on a redeclare with other arguments) is reported through done(err)
// and replication continues on a new apply channel.
func testMirrorTopologyFailure(t *testing.T, _, mirNode *testenv.Node) {
	checkLeaks(t)
	s := &script{t: t}
	s.topology(&amqp.QueueDeclare{Queue: "f.q", Durable: true})
	s.publish("", "f.q", amqp.Properties{}, []byte("before"))
	s.topology(&amqp.QueueDeclare{Queue: "f.q", Durable: false}) // 406 PRECONDITION_FAILED
	s.publish("", "f.q", amqp.Properties{}, []byte("after"))
	mir := newMirror(t, mirNode.URL, MirrorConfig{})
	rec := &recorder{}
	s.apply(mir, rec, 0, len(s.ops))
	rec.check(t, len(s.ops))
	for i, err := range rec.errs {
		if (i == 2) != (err != nil) {
			t.Fatalf("op %d: done(%v)", i, err)
		}
	}
	if !strings.Contains(rec.errs[2].Error(), "406") {
		t.Fatalf("refused redeclare: %v, want a 406", rec.errs[2])
	}
	waitFor(t, "both copies held", 30*time.Second, func() bool { return mir.Held("/", "f.q") == 2 })
	if err := mir.Close(); err != nil {
		t.Fatal(err)
	}
	mc := dialClient(t, mirNode.URL)
	if got := mc.drain("f.q", 2); string(got[0].body) != "before" || string(got[1].body) != "after" {
		t.Fatalf("queue holds %q, %q", got[0].body, got[1].body)
	}
	mc.rpc(&amqp.QueueDelete{Queue: "f.q"})
}
