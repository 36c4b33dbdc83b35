package replicate

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
	"github.com/mirrorproxy/mirrorproxy/testenv"
)

// TestMirrorSyncJoinedMidStream is a mirror that joined while a client
// published: the queue is declared to it (the master's replay) before it
// has seen any publish, one message then comes by routing, and the sync
// brings the older ones (and offers the routed one again). The copy ends
// with every message in the master's order — sync copies first, the routed
// ones moved behind them — and every ack of the master finds its copy.
// (Found by the demo: with no publish seen, the copy took every id for a
// routed one and skipped the whole sync; acks of the missing copies then
// held up every later ack.)
func TestMirrorSyncJoinedMidStream(t *testing.T) {
	if testing.Short() {
		t.Skip("starts RabbitMQ brokers")
	}
	checkLeaks(t)
	node := testenv.Start(t, testenv.Options{Nodes: 1}).Nodes[0]
	const q = "sync.mid"
	id := func(n uint64) uint64 { return 1<<40 | n }
	props := amqp.Properties{DeliveryMode: amqp.Persistent}
	body := func(n uint64) []byte { return []byte(fmt.Sprintf("m%02d", n)) }
	publish := func(n uint64) []byte {
		return AppendOp(nil, &Op{Kind: OpPublish, Vhost: "/", ID: id(n), RoutingKey: q, Header: stamp(id(n), props, len(body(n))), Body: body(n)})
	}
	copyOp := func(n uint64) []byte {
		return AppendOp(nil, &Op{Kind: OpSyncCopy, Vhost: "/", Queue: q, Header: stamp(id(n), props, len(body(n))), Body: body(n)})
	}
	ops := [][]byte{
		AppendOp(nil, &Op{Kind: OpTopology, Vhost: "/", Method: amqp.AppendMethod(nil, &amqp.QueueDeclare{Queue: q, Durable: true})}),
		publish(10), // routed: the first publish this mirror sees
		AppendOp(nil, &Op{Kind: OpSyncStart, Vhost: "/", Queue: q, ID: 1, Nodes: []string{"me"}}),
	}
	for n := uint64(1); n <= 5; n++ {
		ops = append(ops, copyOp(n))
	}
	ops = append(ops, copyOp(10), publish(11), copyOp(11),
		AppendOp(nil, &Op{Kind: OpSyncEnd, Vhost: "/", Queue: q, ID: 1}))

	m := newMirror(t, node.URL, MirrorConfig{Self: "me"})
	r := &recorder{}
	for i, b := range ops {
		m.Apply(b, r.done(i))
	}
	r.check(t, len(ops))
	for i, err := range r.errs {
		if err != nil {
			t.Fatalf("op %d: %v", i, err)
		}
	}
	waitFor(t, "7 copies held", 30*time.Second, func() bool { return m.Held("/", q) == 7 })

	// The master's acks, in its order, as clients consume: every copy goes.
	all := []uint64{id(1), id(2), id(3), id(4), id(5), id(10), id(11)}
	m.Apply(AppendOp(nil, &Op{Kind: OpAck, Vhost: "/", Queue: q, IDs: all[:3]}), r.done(len(ops)))
	r.check(t, len(ops)+1)
	waitFor(t, "the acked copies to go", 30*time.Second, func() bool { return m.Held("/", q) == 4 })
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, msg := range dialClient(t, node.URL).drain(q, 4) {
		got = append(got, string(msg.body))
	}
	if want := []string{"m04", "m05", "m10", "m11"}; !slices.Equal(got, want) {
		t.Fatalf("the copy holds %v, want %v (sync copies first, then the routed ones)", got, want)
	}
}

// TestMirrorSyncBeyondPrefetch: a synced copy larger than the shadow
// consumer's prefetch keeps the rest ready; the master's acks of those
// older messages arrive before their copies reach the shadow consumer, are
// kept apart, and apply when the copies come — the copy empties as the
// master's queue does, and no ack waiting for a copy holds up the others.
func TestMirrorSyncBeyondPrefetch(t *testing.T) {
	if testing.Short() {
		t.Skip("starts RabbitMQ brokers")
	}
	checkLeaks(t)
	node := testenv.Start(t, testenv.Options{Nodes: 1}).Nodes[0]
	const q, n = "sync.big", 40
	id := func(i uint64) uint64 { return 1<<40 | i }
	props := amqp.Properties{DeliveryMode: amqp.Persistent}
	ops := [][]byte{
		AppendOp(nil, &Op{Kind: OpTopology, Vhost: "/", Method: amqp.AppendMethod(nil, &amqp.QueueDeclare{Queue: q, Durable: true})}),
		AppendOp(nil, &Op{Kind: OpSyncStart, Vhost: "/", Queue: q, ID: 1, Nodes: []string{"me"}}),
	}
	var ids []uint64
	for i := uint64(1); i <= n; i++ {
		ids = append(ids, id(i))
		ops = append(ops, AppendOp(nil, &Op{Kind: OpSyncCopy, Vhost: "/", Queue: q, Header: stamp(id(i), props, 1), Body: []byte{'x'}}))
	}
	ops = append(ops, AppendOp(nil, &Op{Kind: OpSyncEnd, Vhost: "/", Queue: q, ID: 1}))
	// The master's consumers ack everything, one by one.
	for _, x := range ids {
		ops = append(ops, AppendOp(nil, &Op{Kind: OpAck, Vhost: "/", Queue: q, IDs: []uint64{x}}))
	}
	m := newMirror(t, node.URL, MirrorConfig{Self: "me", MaxHeld: 8})
	r := &recorder{}
	for i, b := range ops {
		m.Apply(b, r.done(i))
	}
	r.check(t, len(ops))
	c := dialClient(t, node.URL)
	waitFor(t, "the copy to empty", 30*time.Second, func() bool { return m.Held("/", q) == 0 && c.count(q) == 0 })
}
