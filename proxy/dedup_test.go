package proxy

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// dedupRepl is a fakeRepl that is also a Deduper with a fixed set.
type dedupRepl struct {
	fakeRepl
	stored map[uint64]bool
}

func (r *dedupRepl) Stored(key uint64) bool { return r.stored[key] }

// frontPublish is a publish as a front sends it on: its header carries
// the front stamp key.
func frontPublish(t *testing.T, ch uint16, key uint64, body string) []byte {
	t.Helper()
	b := method(ch, &amqp.BasicPublish{Exchange: "x", RoutingKey: "k"})
	h := amqp.AppendContentHeader(nil, 60, uint64(len(body)), &amqp.Properties{DeliveryMode: 2})
	h, err := amqp.AppendFrontStamp(nil, h, key)
	if err != nil {
		t.Fatal(err)
	}
	b = amqp.AppendFrame(b, amqp.FrameHeader, ch, h)
	return amqp.AppendFrame(b, amqp.FrameBody, ch, []byte(body))
}

// headerOf returns the content-header payload among frames sent on.
func headerOf(t *testing.T, sent [][]byte) []byte {
	t.Helper()
	for _, raw := range sent {
		for _, f := range frames(t, raw) {
			if f.Type == amqp.FrameHeader {
				return f.Payload
			}
		}
	}
	t.Fatal("no content header was sent on")
	return nil
}

// TestFrontStampsConfirmModePublishes: a session that may move stamps each
// confirm-mode publish with its front key, on the frame it sends and on
// the frame it keeps for a replay; a publish without confirms is sent as
// the client made it.
func TestFrontStampsConfirmModePublishes(t *testing.T) {
	s := newScript(t, 1<<20, clientCaps{})
	s.st.stampFront = true
	s.mustClient(method(1, &amqp.ChannelOpen{}))
	s.mustClient(method(2, &amqp.ChannelOpen{}))
	s.mustClient(method(2, &amqp.ConfirmSelect{}))

	plain := s.clientSends(publish(1, "plain"))
	if !bytes.Equal(bytes.Join(plain, nil), publish(1, "plain")) {
		t.Fatal("a publish without confirms was changed")
	}
	var keys []uint64
	for seq := uint64(1); seq <= 2; seq++ {
		sent := s.clientSends(publish(2, "confirmed"))
		h := headerOf(t, sent)
		key, ok, err := amqp.TakeFrontKey(append([]byte(nil), h...), 0)
		if err != nil || !ok || key == 0 {
			t.Fatalf("publish %d: front key %x %v %v", seq, key, ok, err)
		}
		keys = append(keys, key)
	}
	if keys[0] == keys[1] {
		t.Fatal("two publishes got the same front key")
	}
	var kept [][]byte
	s.st.channel(2).unconfirmed.each(func(seq uint64, b []byte) { kept = append(kept, b) })
	if len(kept) != 2 {
		t.Fatalf("%d publishes kept for a replay, want 2", len(kept))
	}
	key, ok, _ := amqp.TakeFrontKey(append([]byte(nil), headerOf(t, kept[1:])...), 0)
	if !ok || key != keys[1] {
		t.Fatal("the kept frames do not carry the front key: a replay would not be recognised")
	}
}

// TestCoreDropsRepublishedStoredMessages: the master's core serving a
// front's leg drops a publish whose front key the node stored already
// (the broker never sees it), confirms it in its turn, and maps the
// broker's later confirm numbers past it.
func TestCoreDropsRepublishedStoredMessages(t *testing.T) {
	s, _, sink := newReplScript(t)
	r := &dedupRepl{stored: map[uint64]bool{202: true, 203: true}}
	s.st.repl, s.st.dedup, s.st.served = r, r, true
	r.Watch(func(t Ticket) { s.st.onStable(t) })
	s.mustClient(method(1, &amqp.ChannelOpen{}))
	s.mustClient(method(1, &amqp.ConfirmSelect{}))

	var toBroker [][]byte
	for i, key := range []uint64{201, 202, 203, 204} {
		sent := s.clientSends(frontPublish(t, 1, key, fmt.Sprint("m", i+1)))
		toBroker = append(toBroker, sent...)
	}
	// 202 and 203 are stored: only 201 and 204 reach the broker, whole,
	// with the core's stamp in place of the front's.
	var bodies []string
	for _, raw := range toBroker {
		for _, f := range frames(t, raw) {
			switch f.Type {
			case amqp.FrameBody:
				bodies = append(bodies, string(f.Payload))
			case amqp.FrameHeader:
				if _, ok, _ := amqp.PeekMirrorID(f.Payload); !ok {
					t.Fatal("a header reached the broker without the x-mirror-id stamp")
				}
				if bytes.Contains(f.Payload, []byte(amqp.FrontKeyHeader)) {
					t.Fatal("the front stamp reached the broker")
				}
			}
		}
	}
	if fmt.Sprint(bodies) != "[m1 m4]" {
		t.Fatalf("the broker got %v, want [m1 m4]", bodies)
	}
	if len(r.pubs) != 2 || r.pubs[0].Key != 201 || r.pubs[1].Key != 204 {
		t.Fatalf("replicated %d publishes: %+v", len(r.pubs), r.pubs)
	}
	// Nothing confirmed yet: 2 and 3 wait for 1.
	if got := sink.take(t); len(got) != 0 {
		t.Fatalf("confirmed out of order: %v", got)
	}
	// The broker numbers its two publishes 1 and 2; the leg's are 1 and 4.
	s.brokerSends(method(1, &amqp.BasicAck{DeliveryTag: 1}))
	r.stable(1)
	if got := sink.take(t); fmt.Sprint(got) != "[ack 3 multiple=true]" {
		t.Fatalf("after the broker confirmed its 1: %v", got)
	}
	s.brokerSends(method(1, &amqp.BasicAck{DeliveryTag: 2}))
	r.stable(2)
	if got := sink.take(t); fmt.Sprint(got) != "[ack 4 multiple=true]" {
		t.Fatalf("after the broker confirmed its 2: %v", got)
	}
	if s.st.channel(1).unconfirmed.pending() != 0 {
		t.Fatal("publishes are still unconfirmed")
	}
}

// TestCoreConfirmsADroppedPublishAtOnce: a dropped publish with nothing
// unconfirmed before it is confirmed straight away.
func TestCoreConfirmsADroppedPublishAtOnce(t *testing.T) {
	s, _, sink := newReplScript(t)
	r := &dedupRepl{stored: map[uint64]bool{7: true}}
	s.st.repl, s.st.dedup, s.st.served = r, r, true
	s.mustClient(method(1, &amqp.ChannelOpen{}))
	s.mustClient(method(1, &amqp.ConfirmSelect{}))
	if sent := s.clientSends(frontPublish(t, 1, 7, "again")); len(sent) != 0 {
		t.Fatalf("%d frames of a stored publish reached the broker", len(sent))
	}
	if got := sink.take(t); fmt.Sprint(got) != "[ack 1 multiple=true]" {
		t.Fatalf("the dropped publish: %v", got)
	}
	if !s.st.flushClient {
		t.Fatal("the client pump is not asked to flush the confirm it made up")
	}
}

// TestCombinedSessionKeepsTheFrontStamp: a client on the master's own
// sidecar: the broker gets the core's stamp, the op the front key, and the
// frames kept for a replay the front stamp (so a move re-sends them
// recognisably).
func TestCombinedSessionKeepsTheFrontStamp(t *testing.T) {
	s, r, _ := newReplScript(t)
	s.st.stampFront = true
	s.mustClient(method(1, &amqp.ChannelOpen{}))
	s.mustClient(method(1, &amqp.ConfirmSelect{}))
	sent := s.clientSends(publish(1, "body"))
	h := headerOf(t, sent)
	if id, ok, _ := amqp.PeekMirrorID(h); !ok || id != 1001 {
		t.Fatalf("the broker's header: id %d %v", id, ok)
	}
	if len(r.pubs) != 1 || r.pubs[0].Key == 0 {
		t.Fatalf("the op's key: %+v", r.pubs)
	}
	var kept []byte
	s.st.channel(1).unconfirmed.each(func(_ uint64, b []byte) { kept = b })
	key, ok, _ := amqp.TakeFrontKey(append([]byte(nil), headerOf(t, [][]byte{kept})...), 0)
	if !ok || key != r.pubs[0].Key {
		t.Fatal("the frames kept for a replay lack the front stamp")
	}
}

func TestLegSeq(t *testing.T) {
	ch := &channelState{}
	ch.r.skipped = []uint64{2, 3, 6}
	// Leg 1 2 3 4 5 6 7 → broker 1 - - 2 3 - 4.
	for broker, leg := range map[uint64]uint64{1: 1, 2: 4, 3: 5, 4: 7, 5: 8} {
		if got := ch.legSeq(broker); got != leg {
			t.Errorf("broker %d → leg %d, want %d", broker, got, leg)
		}
	}
}
