package proxy

import (
	"testing"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// After a move the new broker numbers the replayed publishes 1..k, then the
// new ones; the client's numbers come back in order, so `multiple` keeps
// its meaning.
func TestSeqMapAfterMove(t *testing.T) {
	m := &seqMap{replayed: []uint64{4, 7, 9}, base: 12}
	for broker, want := range map[uint64]uint64{1: 4, 2: 7, 3: 9, 4: 12, 5: 13, 10: 18} {
		if got := m.client(broker); got != want {
			t.Errorf("broker seq %d maps to %d, want %d", broker, got, want)
		}
	}
	var none *seqMap
	if none.client(5) != 5 {
		t.Error("before any move, seqs are the broker's")
	}
	empty := &seqMap{base: 3}
	if empty.client(1) != 3 {
		t.Errorf("with nothing replayed, broker seq 1 is the client's %d", empty.client(1))
	}
}

// Acks of the old broker's deliveries (tags at or below tagBase) are
// dropped; newer tags are rebased onto the new broker's.
func TestSettlesAfterMove(t *testing.T) {
	st := newSessionState(1 << 20)
	st.openChannel(1)
	ch := st.channel(1)
	ch.tagBase = 10
	for _, c := range []struct {
		name    string
		m       amqp.Method
		fwd     bool
		wantTag uint64
	}{
		{"ack of an old delivery", &amqp.BasicAck{DeliveryTag: 7}, false, 0},
		{"ack of the last old delivery", &amqp.BasicAck{DeliveryTag: 10}, false, 0},
		{"ack of a new delivery", &amqp.BasicAck{DeliveryTag: 13}, true, 3},
		{"multiple ack reaching new deliveries", &amqp.BasicAck{DeliveryTag: 12, Multiple: true}, true, 2},
		{"multiple ack of old ones only", &amqp.BasicAck{DeliveryTag: 9, Multiple: true}, false, 0},
		{"ack of everything", &amqp.BasicAck{DeliveryTag: 0, Multiple: true}, true, 0},
		{"nack of a new delivery", &amqp.BasicNack{DeliveryTag: 11, Requeue: true}, true, 1},
		{"reject of an old delivery", &amqp.BasicReject{DeliveryTag: 2}, false, 0},
		{"reject of a new delivery", &amqp.BasicReject{DeliveryTag: 15}, true, 5},
	} {
		raw := amqp.AppendMethodFrame(nil, 1, c.m)
		f := amqp.Frame{Type: amqp.FrameMethod, Channel: 1, Payload: raw[7 : len(raw)-1], Raw: raw}
		fwd, err := st.fromClient(f)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if fwd != c.fwd {
			t.Errorf("%s: forwarded %v, want %v", c.name, fwd, c.fwd)
			continue
		}
		if !fwd {
			continue
		}
		m, err := amqp.DecodeMethod(f.Payload)
		if err != nil {
			t.Fatal(err)
		}
		var tag uint64
		switch m := m.(type) {
		case *amqp.BasicAck:
			tag = m.DeliveryTag
		case *amqp.BasicNack:
			tag = m.DeliveryTag
		case *amqp.BasicReject:
			tag = m.DeliveryTag
		}
		if tag != c.wantTag {
			t.Errorf("%s: the broker gets tag %d, want %d", c.name, tag, c.wantTag)
		}
	}
}
