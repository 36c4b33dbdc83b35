package replicate

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
	"github.com/mirrorproxy/mirrorproxy/testenv"
	// The docker backend, for MIRRORPROXY_TESTENV=docker.
	_ "github.com/mirrorproxy/mirrorproxy/testenv/docker"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

// TestMirrorBroker runs the broker tests on one group, closed when it
// ends: node 0 is the reference broker that receives the traffic directly,
// node 1 the mirror's broker.
func TestMirrorBroker(t *testing.T) {
	if testing.Short() {
		t.Skip("starts RabbitMQ brokers")
	}
	g := testenv.Start(t, testenv.Options{Nodes: 2})
	ref, mir := g.Nodes[0], g.Nodes[1]
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, ref, mir *testenv.Node)
	}{
		{"ScriptMatchesReference", testMirrorScriptMatchesReference},
		{"TTL", testMirrorTTL},
		{"DoneWaitsForConfirm", testMirrorDoneWaitsForConfirm},
		{"Bounds", testMirrorBounds},
		{"TopologyFailure", testMirrorTopologyFailure},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, ref, mir) })
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkLeaks checks, after the test's cleanups, that it left no goroutine.
func checkLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

func testLogger(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
}

// client is a test client on the raw connection: it keeps bodies.
type client struct {
	t    *testing.T
	conn *brokerConn
	ch   *brokerChan
}

func dialClient(t *testing.T, url string) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dialBroker(ctx, url, "/", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ch, err := c.openChannel(ctx, chanHandlers{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.rpc(ctx, &amqp.ConfirmSelect{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	return &client{t: t, conn: c, ch: ch}
}

func (c *client) rpc(m amqp.Method) amqp.Method {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := c.ch.rpc(ctx, m)
	if err != nil {
		c.t.Fatalf("%s: %v", m.Name(), err)
	}
	return r
}

// message is what a consumer saw.
type message struct {
	tag         uint64
	redelivered bool
	header      []byte
	body        []byte
}

// consumer consumes a queue on its own channel with manual acks.
type consumer struct {
	ch   *brokerChan
	mu   sync.Mutex
	msgs []message
}

func (c *client) consume(queue string) *consumer {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	co := &consumer{}
	ch, err := c.conn.openChannel(ctx, chanHandlers{keepBody: true, deliver: func(d *amqp.BasicDeliver, h, b []byte) {
		co.mu.Lock()
		co.msgs = append(co.msgs, message{tag: d.DeliveryTag, redelivered: d.Redelivered, header: bytes.Clone(h), body: bytes.Clone(b)})
		co.mu.Unlock()
	}})
	if err != nil {
		c.t.Fatal(err)
	}
	co.ch = ch
	if _, err := ch.rpc(ctx, &amqp.BasicConsume{Queue: queue, ConsumerTag: "test"}); err != nil {
		c.t.Fatal(err)
	}
	return co
}

func (co *consumer) snapshot() []message {
	co.mu.Lock()
	defer co.mu.Unlock()
	return slices.Clone(co.msgs)
}

// drain consumes the whole queue (n messages expected) and closes the consumer.
func (c *client) drain(queue string, n int) []message {
	c.t.Helper()
	co := c.consume(queue)
	waitFor(c.t, fmt.Sprintf("%d messages from %s", n, queue), 30*time.Second, func() bool { return len(co.snapshot()) >= n })
	for _, m := range co.snapshot() {
		if err := co.ch.send(&amqp.BasicAck{DeliveryTag: m.tag}); err != nil {
			c.t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := co.ch.close(ctx); err != nil {
		c.t.Fatal(err)
	}
	return co.snapshot()
}

func (c *client) count(queue string) int {
	c.t.Helper()
	r := c.rpc(&amqp.QueueDeclare{Queue: queue, Passive: true})
	return int(r.(*amqp.QueueDeclareOk).MessageCount)
}

// script builds an op stream and applies the same traffic to a reference.
type script struct {
	t      *testing.T
	ops    [][]byte
	nextID uint64
}

func (s *script) topology(m amqp.Method) {
	s.ops = append(s.ops, AppendOp(nil, &Op{Kind: OpTopology, Vhost: "/", Method: amqp.AppendMethod(nil, m)}))
}

// stamp returns the content header payload with x-mirror-id stamped as
// the core does: 'l' in an existing table, 'T' in a table of its own.
func stamp(id uint64, props amqp.Properties, bodySize int) []byte {
	h, err := amqp.AppendStampedHeader(nil, amqp.AppendContentHeader(nil, 60, uint64(bodySize), &props), id)
	if err != nil {
		panic(err)
	}
	return h
}

func (s *script) publish(exchange, key string, props amqp.Properties, body []byte) uint64 {
	s.nextID++
	id := 1<<40 | s.nextID
	s.ops = append(s.ops, AppendOp(nil, &Op{Kind: OpPublish, Vhost: "/", ID: id, Exchange: exchange, RoutingKey: key,
		Header: stamp(id, props, len(body)), Body: body}))
	return id
}

func (s *script) dispose(kind OpKind, queue string, ids ...uint64) {
	s.ops = append(s.ops, AppendOp(nil, &Op{Kind: kind, Vhost: "/", Queue: queue, IDs: ids}))
}

// replay sends the script's publishes and topology to a reference broker
// directly (dispositions are the caller's, by consuming there).
func (s *script) replay(c *client, from, to int) {
	for _, b := range s.ops[from:to] {
		op, err := ParseOp(b)
		if err != nil {
			s.t.Fatal(err)
		}
		switch op.Kind {
		case OpTopology:
			m, err := amqp.DecodeMethod(op.Method)
			if err != nil {
				s.t.Fatal(err)
			}
			if b, ok := m.(*amqp.QueueBind); ok {
				b.NoWait = false
			}
			c.rpc(m)
		case OpPublish:
			if err := c.ch.publish(op.Exchange, op.RoutingKey, op.Mandatory, op.Header, op.Body); err != nil {
				s.t.Fatal(err)
			}
		}
	}
	// A synchronous round trip after the publishes: they are routed.
	c.rpc(&amqp.BasicQos{})
}

// recorder collects done callbacks in order.
type recorder struct {
	mu   sync.Mutex
	seen []int
	errs []error
}

func (r *recorder) done(i int) func(error) {
	return func(err error) {
		r.mu.Lock()
		r.seen = append(r.seen, i)
		r.errs = append(r.errs, err)
		r.mu.Unlock()
	}
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

func (r *recorder) check(t *testing.T, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d done callbacks", n), 30*time.Second, func() bool { return r.count() >= n })
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.seen) != n {
		t.Fatalf("%d done callbacks, want %d", len(r.seen), n)
	}
	for i, s := range r.seen {
		if s != i {
			t.Fatalf("done callbacks out of order: %v", r.seen)
		}
	}
}

func newMirror(t *testing.T, url string, cfg MirrorConfig) *Mirror {
	t.Helper()
	cfg.BrokerURL = url
	cfg.Logger = testLogger(t)
	m, err := NewMirror(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func (s *script) apply(m *Mirror, r *recorder, from, to int) {
	for i := from; i < to; i++ {
		m.Apply(s.ops[i], r.done(i))
	}
}

// headerWithout decodes a content header and drops the volatile parts of
// x-death (its time) so that two brokers' dead-lettered copies compare.
func headerWithout(t *testing.T, h []byte) amqp.Properties {
	t.Helper()
	_, _, p, err := amqp.DecodeContentHeader(h)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := p.Headers.Get("x-death"); ok {
		for _, d := range v.([]any) {
			tb := d.(amqp.Table)
			i := tb.Index("time")
			if i >= 0 {
				tb[i].Value = amqp.Timestamp(0)
			}
		}
	}
	return p
}

func deathReason(t *testing.T, h []byte) string {
	t.Helper()
	p := headerWithout(t, h)
	v, ok := p.Headers.Get("x-death")
	if !ok {
		return ""
	}
	r, _ := v.([]any)[0].(amqp.Table).Get("reason")
	s, _ := r.(string)
	return s
}

// compare checks two drained queues hold the same messages in order:
// identical content header octets (or, with x-death, equal but for its
// time) and bodies.
func compare(t *testing.T, what string, ref, mir []message) {
	t.Helper()
	if len(ref) != len(mir) {
		t.Fatalf("%s: reference has %d messages, mirror %d", what, len(ref), len(mir))
	}
	for i := range ref {
		if !bytes.Equal(ref[i].body, mir[i].body) {
			t.Fatalf("%s: message %d: bodies differ (%q vs %q)", what, i, trunc(ref[i].body), trunc(mir[i].body))
		}
		if bytes.Equal(ref[i].header, mir[i].header) {
			continue
		}
		rp, mp := headerWithout(t, ref[i].header), headerWithout(t, mir[i].header)
		if _, ok := rp.Headers.Get("x-death"); !ok || fmt.Sprintf("%#v", rp) != fmt.Sprintf("%#v", mp) {
			t.Fatalf("%s: message %d: headers differ\nref %#v\nmir %#v", what, i, rp, mp)
		}
	}
}

func richProps(i int) amqp.Properties {
	switch i % 4 {
	case 0:
		return amqp.Properties{} // no headers: x-mirror-id goes in as 'T'
	case 1:
		return amqp.Properties{ContentType: "application/json", DeliveryMode: amqp.Persistent, Priority: 3,
			CorrelationID: "c1", ReplyTo: "r", MessageID: fmt.Sprint("m", i), Timestamp: 1700000000, Type: "t", AppID: "a",
			Headers: amqp.Table{
				{Key: "b", Value: int8(-3)}, {Key: "B", Value: uint8(3)}, {Key: "s", Value: int16(-300)}, {Key: "u", Value: uint16(300)},
				{Key: "I", Value: int32(-70000)}, {Key: "i", Value: uint32(70000)}, {Key: "l", Value: int64(-1 << 40)}, {Key: "f", Value: float32(1.5)},
				{Key: "d", Value: 2.25}, {Key: "D", Value: amqp.Decimal{Scale: 2, Value: 12345}}, {Key: "S", Value: "text"},
				{Key: "x", Value: []byte{0, 1, 2}}, {Key: "T", Value: amqp.Timestamp(1700000001)}, {Key: "t", Value: true},
				{Key: "V", Value: nil}, {Key: "A", Value: []any{int32(1), "two", amqp.Table{{Key: "k", Value: "v"}}}},
				{Key: "F", Value: amqp.Table{{Key: "nested", Value: int64(5)}}},
			}}
	case 2:
		return amqp.Properties{ContentEncoding: "gzip", DeliveryMode: amqp.Transient, Headers: amqp.Table{}}
	default:
		return amqp.Properties{UserID: "guest", Headers: amqp.Table{{Key: "dup", Value: "1"}, {Key: "dup", Value: "2"}}}
	}
}

func testMirrorScriptMatchesReference(t *testing.T, refNode, mirNode *testenv.Node) {
	checkLeaks(t)
	s := &script{t: t}
	// Topology.
	s.topology(&amqp.ExchangeDeclare{Exchange: "s.ex", Type: "direct"})
	s.topology(&amqp.ExchangeDeclare{Exchange: "s.dlx", Type: "fanout"})
	s.topology(&amqp.QueueDeclare{Queue: "s.q1", Durable: true, Arguments: amqp.Table{{Key: "x-dead-letter-exchange", Value: "s.dlx"}}})
	s.topology(&amqp.QueueDeclare{Queue: "s.dead", Durable: true})
	s.topology(&amqp.QueueDeclare{Queue: "s.q2"})
	s.topology(&amqp.QueueDeclare{Queue: "s.q3"})
	s.topology(&amqp.QueueDeclare{Queue: "s.excl", Exclusive: true}) // never mirrored
	s.topology(&amqp.QueueBind{Queue: "s.q1", Exchange: "s.ex", RoutingKey: "k", NoWait: true})
	s.topology(&amqp.QueueBind{Queue: "s.dead", Exchange: "s.dlx"})
	s.topology(&amqp.QueueBind{Queue: "s.q2", Exchange: "s.ex", RoutingKey: "k2"})
	setup := len(s.ops)
	// Publishes: various properties and header types, an empty and a
	// multi-frame body; an ack op before its message.
	var ids []uint64
	for i := range 20 {
		body := []byte(fmt.Sprintf("message %d", i))
		switch i {
		case 6:
			body = nil
		case 11:
			body = bytes.Repeat([]byte("0123456789"), 30000)
		}
		ids = append(ids, s.publish("s.ex", "k", richProps(i), body))
	}
	for i := range 5 {
		s.publish("s.ex", "k2", richProps(i), []byte(fmt.Sprint("q2 ", i)))
		s.publish("", "s.q3", amqp.Properties{}, []byte(fmt.Sprint("q3 ", i)))
	}
	early := 1<<40 | (s.nextID + 1)
	s.dispose(OpAck, "s.q1", early) // before its publish
	s.publish("s.ex", "k", amqp.Properties{}, []byte("acked before delivery"))
	published := len(s.ops)
	// Dispositions out of order, purge, delete.
	s.dispose(OpAck, "s.q1", ids[5], ids[2])
	s.dispose(OpDrop, "s.q1", ids[7], ids[3])
	s.dispose(OpAck, "s.q1", ids[9])
	s.topology(&amqp.QueuePurge{Queue: "s.q2"})
	s.topology(&amqp.QueueDelete{Queue: "s.q3"})

	// The mirror.
	mir := newMirror(t, mirNode.URL, MirrorConfig{})
	rec := &recorder{}
	s.apply(mir, rec, 0, len(s.ops))
	rec.check(t, len(s.ops))
	for i, err := range rec.errs {
		if err != nil {
			t.Fatalf("op %d: done(%v)", i, err)
		}
	}
	waitFor(t, "held copies settle", 30*time.Second, func() bool {
		return mir.Held("/", "s.q1") == 21-6 && mir.Held("/", "s.dead") == 2 && mir.pendingCount("/", "s.q1") == 0
	})
	if n := mir.Held("/", "s.q2"); n != 0 {
		t.Fatalf("purged queue still holds %d copies", n)
	}

	// The reference: same traffic, dispositions by consuming.
	ref := dialClient(t, refNode.URL)
	s.replay(ref, 0, setup)
	co := ref.consume("s.q1")
	s.replay(ref, setup, published)
	waitFor(t, "reference deliveries", 30*time.Second, func() bool { return len(co.snapshot()) == 21 })
	tags := map[uint64]uint64{}
	for _, m := range co.snapshot() {
		id, _, err := mirrorID(m.header)
		if err != nil {
			t.Fatal(err)
		}
		tags[id] = m.tag
	}
	for _, id := range []uint64{early, ids[5], ids[2], ids[9]} {
		if err := co.ch.send(&amqp.BasicAck{DeliveryTag: tags[id]}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []uint64{ids[7], ids[3]} {
		if err := co.ch.send(&amqp.BasicReject{DeliveryTag: tags[id]}); err != nil {
			t.Fatal(err)
		}
	}
	s.replay(ref, published, len(s.ops))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := co.ch.close(ctx); err != nil { // requeues the rest, like Release
		t.Fatal(err)
	}

	if err := mir.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := mir.Close(); err != nil {
		t.Fatal(err)
	}
	mc := dialClient(t, mirNode.URL)
	for _, q := range []string{"s.q1", "s.dead"} {
		n := ref.count(q)
		if m := mc.count(q); m != n {
			t.Fatalf("%s: reference holds %d, mirror %d", q, n, m)
		}
		r, m := ref.drain(q, n), mc.drain(q, n)
		compare(t, q, r, m)
		if q == "s.dead" {
			for _, msg := range m {
				if reason := deathReason(t, msg.header); reason != "rejected" {
					t.Fatalf("dead-lettered copy has x-death reason %q, want rejected", reason)
				}
			}
		}
	}
	if n := mc.count("s.q2"); n != 0 {
		t.Fatalf("mirror's purged queue holds %d", n)
	}
	// Deleted on both; the exclusive queue was never declared on the mirror.
	for _, q := range []string{"s.q3", "s.excl"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := mc.ch.rpc(ctx, &amqp.QueueDeclare{Queue: q, Passive: true})
		cancel()
		if err == nil || !strings.Contains(err.Error(), "404") {
			t.Fatalf("queue %s on the mirror: err = %v, want 404", q, err)
		}
		mc = dialClient(t, mirNode.URL) // the 404 closed the channel
	}
	for _, q := range []string{"s.q1", "s.dead", "s.q2"} {
		ref.rpc(&amqp.QueueDelete{Queue: q})
		mc.rpc(&amqp.QueueDelete{Queue: q})
	}
}

func trunc(b []byte) string { return string(b[:min(len(b), 40)]) }
