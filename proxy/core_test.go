package proxy

import (
	"bytes"
	"fmt"
	"sync"
	"testing"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// fakeRepl records ops and lets a test say when they are stable.
type fakeRepl struct {
	mu      sync.Mutex
	nextID  uint64
	ticket  Ticket
	ops     []string
	pubs    []Publish
	watches []func(Ticket)
}

func (r *fakeRepl) NextID() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextID++
	return 1000 + r.nextID
}

func (r *fakeRepl) op(s string) Ticket {
	r.ticket++
	r.ops = append(r.ops, s)
	return r.ticket
}

func (r *fakeRepl) Publish(p Publish) (Ticket, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cp := p
	cp.Exchange, cp.RoutingKey, cp.Header, cp.Body = clone(p.Exchange), clone(p.RoutingKey), clone(p.Header), clone(p.Body)
	r.pubs = append(r.pubs, cp)
	return r.op(fmt.Sprintf("publish %d %s/%s %q", p.ID, p.Exchange, p.RoutingKey, p.Body)), nil
}

func (r *fakeRepl) Settle(vhost, queue string, ids []uint64, drop bool) (Ticket, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	verb := "ack"
	if drop {
		verb = "drop"
	}
	return r.op(fmt.Sprintf("%s %s %v", verb, queue, ids)), nil
}

func (r *fakeRepl) Topology(vhost string, method []byte) (Ticket, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m, err := amqp.DecodeMethod(method)
	if err != nil {
		return 0, err
	}
	desc := m.Name()
	if d, ok := m.(*amqp.QueueDeclare); ok {
		desc += " " + d.Queue
	}
	return r.op("topology " + desc), nil
}

func (r *fakeRepl) Watch(fn func(Ticket)) func() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.watches = append(r.watches, fn)
	return func() {}
}

// stable reports every op up to t stable.
func (r *fakeRepl) stable(t Ticket) {
	r.mu.Lock()
	ws := append([]func(Ticket){}, r.watches...)
	r.mu.Unlock()
	for _, w := range ws {
		w(t)
	}
}

// sinkFrames collects what the core made up for the client.
type sinkFrames struct{ b []byte }

func (s *sinkFrames) build(fn func([]byte) []byte) { s.b = fn(s.b) }

func (s *sinkFrames) take(t *testing.T) []string {
	t.Helper()
	var out []string
	if len(s.b) == 0 {
		return nil
	}
	for _, f := range frames(t, s.b) {
		m, err := amqp.DecodeMethod(f.Payload)
		if err != nil {
			t.Fatal(err)
		}
		switch m := m.(type) {
		case *amqp.BasicAck:
			out = append(out, fmt.Sprintf("ack %d multiple=%v", m.DeliveryTag, m.Multiple))
		case *amqp.BasicNack:
			out = append(out, fmt.Sprintf("nack %d multiple=%v", m.DeliveryTag, m.Multiple))
		default:
			out = append(out, m.Name())
		}
	}
	s.b = s.b[:0]
	return out
}

func newReplScript(t *testing.T) (*script, *fakeRepl, *sinkFrames) {
	s := newScript(t, 1<<20, clientCaps{})
	r := &fakeRepl{}
	sink := &sinkFrames{}
	s.st.repl, s.st.toClient, s.st.vhost = r, sink, "/"
	r.Watch(func(t Ticket) { s.st.onStable(t) })
	return s, r, sink
}

// clientOut feeds client frames and returns what goes to the broker,
// replacements included.
func (s *script) clientSends(raw []byte) [][]byte {
	s.t.Helper()
	var out [][]byte
	for _, f := range frames(s.t, raw) {
		fwd, err := s.st.fromClient(f)
		if err != nil {
			s.t.Fatalf("client frame: %v", err)
		}
		if !fwd {
			continue
		}
		if s.st.clientRepl {
			s.st.clientRepl = false
			out = append(out, clone(s.st.clientOut))
			continue
		}
		out = append(out, f.Raw)
	}
	return out
}

func (s *script) brokerSends(raw []byte) [][]byte {
	s.t.Helper()
	var out [][]byte
	for _, f := range frames(s.t, raw) {
		fwd, err := s.st.fromUpstream(f)
		if err != nil {
			s.t.Fatalf("broker frame: %v", err)
		}
		if !fwd {
			continue
		}
		if s.st.upRepl {
			s.st.upRepl = false
			f.Raw = s.st.upOut
		}
		out = append(out, clone(f.Raw))
	}
	return out
}

func stampedDeliver(ch uint16, ctag string, tag, id uint64, body string) []byte {
	return deliverWith(ch, ctag, tag, id, true, body)
}

func deliverWith(ch uint16, ctag string, tag, id uint64, stamp bool, body string) []byte {
	b := method(ch, &amqp.BasicDeliver{ConsumerTag: ctag, DeliveryTag: tag, RoutingKey: "k"})
	h := amqp.AppendContentHeader(nil, 60, uint64(len(body)), &amqp.Properties{DeliveryMode: 2})
	if stamp {
		h, _ = amqp.AppendStampedHeader(nil, h, id)
	}
	b = amqp.AppendFrame(b, amqp.FrameHeader, ch, h)
	return amqp.AppendFrame(b, amqp.FrameBody, ch, []byte(body))
}

func TestCoreStampsPublishesAndWithholdsConfirmsUntilStable(t *testing.T) {
	s, r, sink := newReplScript(t)
	s.mustClient(method(1, &amqp.ChannelOpen{}))
	s.mustClient(method(1, &amqp.ConfirmSelect{}))
	for i, body := range []string{"one", "two", "three"} {
		sent := s.clientSends(publish(1, body))
		if len(sent) != 3 {
			t.Fatalf("publish %d: %d frames to the broker", i, len(sent))
		}
		id, ok, err := amqp.PeekMirrorID(sent[1][amqp.FrameHeaderSize : len(sent[1])-1])
		if !ok || err != nil || id != uint64(1001+i) {
			t.Fatalf("publish %d: stamp %d %v %v", i, id, ok, err)
		}
	}
	if len(r.pubs) != 3 || string(r.pubs[2].Body) != "three" || string(r.pubs[0].Exchange) != "x" {
		t.Fatalf("ops: %v", r.ops)
	}
	// The broker confirms 1..2; the ring has nothing stable: nothing for the client.
	if got := s.brokerSends(method(1, &amqp.BasicAck{DeliveryTag: 2, Multiple: true})); len(got) != 0 {
		t.Fatal("the broker's confirm went straight to the client")
	}
	if got := sink.take(t); len(got) != 0 {
		t.Fatalf("confirmed before the ring: %v", got)
	}
	r.stable(1)
	if got := sink.take(t); fmt.Sprint(got) != "[ack 1 multiple=true]" {
		t.Fatalf("after op 1 is stable: %v", got)
	}
	r.stable(3) // the ring is ahead of the broker for 3
	if got := sink.take(t); fmt.Sprint(got) != "[ack 2 multiple=true]" {
		t.Fatalf("after ops 1-3 are stable: %v", got)
	}
	s.brokerSends(method(1, &amqp.BasicNack{DeliveryTag: 3}))
	if got := sink.take(t); fmt.Sprint(got) != "[nack 3 multiple=false]" {
		t.Fatalf("a broker nack: %v", got)
	}
	if s.st.channel(1).unconfirmed.pending() != 0 || s.st.pendingSize != 0 {
		t.Fatal("released publishes are still held")
	}
}

func TestCoreStripsDeliveriesAndSettlesAcks(t *testing.T) {
	s, r, _ := newReplScript(t)
	s.mustClient(method(1, &amqp.ChannelOpen{}))
	s.mustClient(method(1, &amqp.BasicConsume{Queue: "q1", ConsumerTag: "c1"}))
	s.brokerSends(method(1, &amqp.BasicConsumeOk{ConsumerTag: "c1"}))
	want := deliverWith(1, "c1", 1, 0, false, "a") // what the publisher sent
	for i := uint64(1); i <= 4; i++ {
		got := s.brokerSends(stampedDeliver(1, "c1", i, 500+i, "a"))
		if len(got) != 3 {
			t.Fatalf("delivery %d: %d frames", i, len(got))
		}
		if i == 1 && !bytes.Equal(bytes.Join(got, nil), want) {
			t.Fatalf("the consumer got a stamp:\n got %x\nwant %x", bytes.Join(got, nil), want)
		}
	}
	s.clientSends(method(1, &amqp.BasicAck{DeliveryTag: 2, Multiple: true}))
	s.clientSends(method(1, &amqp.BasicReject{DeliveryTag: 4, Requeue: false}))
	s.clientSends(method(1, &amqp.BasicNack{DeliveryTag: 3, Requeue: true}))
	want2 := []string{"ack q1 [501 502]", "drop q1 [504]"}
	if fmt.Sprint(r.ops) != fmt.Sprint(want2) {
		t.Fatalf("ops %q, want %q (a requeue replicates nothing)", r.ops, want2)
	}
}

func TestCoreNoAckAndGetSettleAtDelivery(t *testing.T) {
	s, r, _ := newReplScript(t)
	s.mustClient(method(1, &amqp.ChannelOpen{}))
	s.mustClient(method(1, &amqp.BasicConsume{Queue: "auto", ConsumerTag: "c", NoAck: true}))
	s.brokerSends(method(1, &amqp.BasicConsumeOk{ConsumerTag: "c"}))
	s.brokerSends(stampedDeliver(1, "c", 1, 7, "x"))
	s.clientSends(method(1, &amqp.BasicGet{Queue: "g"}))
	b := method(1, &amqp.BasicGetOk{DeliveryTag: 2, RoutingKey: "k", MessageCount: 0})
	h, _ := amqp.AppendStampedHeader(nil, amqp.AppendContentHeader(nil, 60, 1, &amqp.Properties{}), 8)
	b = amqp.AppendFrame(b, amqp.FrameHeader, 1, h)
	s.brokerSends(amqp.AppendFrame(b, amqp.FrameBody, 1, []byte("y")))
	s.clientSends(method(1, &amqp.BasicAck{DeliveryTag: 2}))
	if want := "[ack auto [7] ack g [8]]"; fmt.Sprint(r.ops) != want {
		t.Fatalf("ops %v, want %s", r.ops, want)
	}
}

func TestCoreTopologyAfterOk(t *testing.T) {
	s, r, _ := newReplScript(t)
	s.mustClient(method(1, &amqp.ChannelOpen{}))
	s.clientSends(method(1, &amqp.QueueDeclare{Durable: true}))
	if len(r.ops) != 0 {
		t.Fatal("a topology op before the broker's -ok")
	}
	s.brokerSends(method(1, &amqp.QueueDeclareOk{Queue: "amq.gen-XYZ"}))
	s.clientSends(method(1, &amqp.ExchangeDeclare{Exchange: "e", Type: "direct", NoWait: true}))
	s.clientSends(method(1, &amqp.QueueBind{Queue: "amq.gen-XYZ", Exchange: "e"}))
	// A refused request (the broker closes the channel) makes no op.
	s.brokerSends(method(1, &amqp.QueueBindOk{}))
	want := "[topology queue.declare amq.gen-XYZ topology exchange.declare topology queue.bind]"
	if fmt.Sprint(r.ops) != want {
		t.Fatalf("ops %v, want %s", r.ops, want)
	}
}

func TestCoreTransactionsReplicateAtCommit(t *testing.T) {
	s, r, sink := newReplScript(t)
	s.mustClient(method(1, &amqp.ChannelOpen{}))
	s.mustClient(method(1, &amqp.TxSelect{}))
	s.clientSends(publish(1, "rolled back"))
	s.clientSends(method(1, &amqp.TxRollback{}))
	s.clientSends(publish(1, "committed"))
	s.clientSends(method(1, &amqp.TxCommit{}))
	if len(r.ops) != 0 {
		t.Fatalf("ops before the commit: %v", r.ops)
	}
	if got := s.brokerSends(method(1, &amqp.TxCommitOk{})); len(got) != 0 {
		t.Fatal("commit-ok passed before the ops were stable")
	}
	if len(r.ops) != 1 || !bytes.Contains([]byte(r.ops[0]), []byte("committed")) {
		t.Fatalf("ops after the commit: %v", r.ops)
	}
	r.stable(1)
	if got := sink.take(t); fmt.Sprint(got) != "[tx.commit-ok]" {
		t.Fatalf("after the ops are stable: %v", got)
	}
}

func TestDlvRing(t *testing.T) {
	var r dlvRing
	for tag := uint64(5); tag <= 10; tag++ {
		r.push(tag, "q", tag*10)
	}
	var got []uint64
	take := func(tag uint64, multiple bool) {
		r.take(tag, multiple, func(q string, id uint64) { got = append(got, id) })
	}
	take(7, false)
	take(6, true)
	take(7, false) // again: nothing
	take(10, true)
	if fmt.Sprint(got) != "[70 50 60 80 90 100]" {
		t.Fatalf("taken %v", got)
	}
	take(3, true) // below the window
	r.push(20, "q", 1)
	take(20, false)
	if fmt.Sprint(got) != "[70 50 60 80 90 100 1]" {
		t.Fatalf("taken %v", got)
	}
}
