package proxy

import (
	"bytes"
	"errors"
	"testing"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// script drives a sessionState with frames as the pumps would, each frame
// going through a real amqp.Reader.
type script struct {
	t  *testing.T
	st *sessionState
}

func newScript(t *testing.T, maxPending int, caps clientCaps) *script {
	st := newSessionState(maxPending)
	st.caps = caps
	st.client = tuneValues{channelMax: 2047, frameMax: 131072}
	st.upstream = st.client
	return &script{t: t, st: st}
}

func frames(t *testing.T, raw []byte) []amqp.Frame {
	t.Helper()
	r := amqp.NewReader(bytes.NewReader(raw), len(raw)+16)
	r.SetMaxFrameSize(0)
	var out []amqp.Frame
	for r.Buffered() > 0 || len(out) == 0 {
		f, err := r.ReadFrame()
		if err != nil {
			t.Fatalf("script frame: %v", err)
		}
		// Copy: the test keeps frames past the next read.
		f.Raw = append([]byte(nil), f.Raw...)
		f.Payload = f.Raw[amqp.FrameHeaderSize : len(f.Raw)-1]
		out = append(out, f)
	}
	return out
}

// client feeds frames from the client and returns what was forwarded.
func (s *script) client(raw []byte) (forwarded []amqp.Frame, err error) {
	s.t.Helper()
	for _, f := range frames(s.t, raw) {
		fwd, err := s.st.fromClient(f)
		if err != nil {
			return forwarded, err
		}
		if fwd {
			forwarded = append(forwarded, f)
		}
	}
	return forwarded, nil
}

func (s *script) upstream(raw []byte) (forwarded []amqp.Frame, err error) {
	s.t.Helper()
	for _, f := range frames(s.t, raw) {
		fwd, err := s.st.fromUpstream(f)
		if err != nil {
			return forwarded, err
		}
		if fwd {
			forwarded = append(forwarded, f)
		}
	}
	return forwarded, nil
}

func (s *script) mustClient(raw []byte) []amqp.Frame {
	s.t.Helper()
	f, err := s.client(raw)
	if err != nil {
		s.t.Fatalf("client frames: %v", err)
	}
	return f
}

func (s *script) mustUpstream(raw []byte) []amqp.Frame {
	s.t.Helper()
	f, err := s.upstream(raw)
	if err != nil {
		s.t.Fatalf("broker frames: %v", err)
	}
	return f
}

func method(ch uint16, m amqp.Method) []byte { return amqp.AppendMethodFrame(nil, ch, m) }

func publish(ch uint16, body string) []byte {
	b := method(ch, &amqp.BasicPublish{Exchange: "x", RoutingKey: "k"})
	b = amqp.AppendContentHeaderFrame(b, ch, 60, uint64(len(body)), &amqp.Properties{DeliveryMode: 2})
	if body != "" {
		b = amqp.AppendFrame(b, amqp.FrameBody, ch, []byte(body))
	}
	return b
}

func deliver(ch uint16, tag uint64, body string) []byte {
	b := method(ch, &amqp.BasicDeliver{ConsumerTag: "ctag", DeliveryTag: tag, Exchange: "x", RoutingKey: "k"})
	b = amqp.AppendContentHeaderFrame(b, ch, 60, uint64(len(body)), &amqp.Properties{})
	return amqp.AppendFrame(b, amqp.FrameBody, ch, []byte(body))
}

func wantCode(t *testing.T, err error, code uint16) {
	t.Helper()
	var fe *amqp.FrameError
	if !errors.As(err, &fe) {
		t.Fatalf("got error %v, want reply code %d", err, code)
	}
	if fe.Code != code {
		t.Fatalf("got %d %q, want reply code %d", fe.Code, fe.Reason, code)
	}
}

func TestStateConfirmModeKeepsUnconfirmedPublishes(t *testing.T) {
	s := newScript(t, 1<<20, clientCaps{})
	s.mustClient(method(1, &amqp.ChannelOpen{}))
	s.mustClient(method(1, &amqp.ConfirmSelect{}))
	s.mustUpstream(method(1, &amqp.ConfirmSelectOk{}))
	var sent [][]byte
	for _, body := range []string{"one", "two", "three", "four"} {
		p := publish(1, body)
		sent = append(sent, p)
		if got := s.mustClient(p); len(got) != 3 {
			t.Fatalf("forwarded %d frames of a publish, want 3", len(got))
		}
	}
	ch := s.st.channel(1)
	if ch.nextSeq != 5 || ch.unconfirmed.pending() != 4 {
		t.Fatalf("next seq %d pending %d, want 5 and 4", ch.nextSeq, ch.unconfirmed.pending())
	}
	s.mustUpstream(method(1, &amqp.BasicAck{DeliveryTag: 2, Multiple: true}))
	s.mustUpstream(method(1, &amqp.BasicAck{DeliveryTag: 4}))
	var replay [][]byte
	var seqs []uint64
	if !ch.unconfirmed.each(func(seq uint64, b []byte) {
		seqs = append(seqs, seq)
		replay = append(replay, append([]byte(nil), b...))
	}) {
		t.Fatal("replay not possible")
	}
	if len(seqs) != 1 || seqs[0] != 3 || !bytes.Equal(replay[0], sent[2]) {
		t.Fatalf("unconfirmed %v, want only seq 3 with its original frames", seqs)
	}
	s.mustUpstream(method(1, &amqp.BasicNack{DeliveryTag: 3}))
	if ch.unconfirmed.pending() != 0 || s.st.pendingSize != 0 {
		t.Fatalf("after every confirm: pending %d, %d bytes held", ch.unconfirmed.pending(), s.st.pendingSize)
	}
}

func TestStateUnconfirmedBoundMakesSessionUnmovable(t *testing.T) {
	s := newScript(t, 200, clientCaps{})
	s.mustClient(method(1, &amqp.ChannelOpen{}))
	s.mustClient(method(1, &amqp.ConfirmSelect{}))
	big := string(bytes.Repeat([]byte("x"), 300))
	s.mustClient(publish(1, big))
	if ok, why := s.st.movable(); ok || why == "" {
		t.Fatal("a session over the unconfirmed bound must not be movable")
	}
	if s.st.pendingSize > 200 {
		t.Fatalf("holding %d bytes over a bound of 200", s.st.pendingSize)
	}
	s.mustUpstream(method(1, &amqp.BasicAck{DeliveryTag: 1}))
	if ok, why := s.st.movable(); !ok {
		t.Fatalf("movable again once confirmed, but: %s", why)
	}
}

func TestStateConsumersAndServerCancel(t *testing.T) {
	for _, notify := range []bool{false, true} {
		s := newScript(t, 1<<20, clientCaps{consumerCancelNotify: notify})
		s.mustClient(method(1, &amqp.ChannelOpen{}))
		args := amqp.Table{{Key: "x-cancel-on-ha-failover", Value: true}, {Key: "x-priority", Value: int32(5)}}
		s.mustClient(method(1, &amqp.BasicConsume{Queue: "q1", Arguments: args}))
		s.mustClient(method(1, &amqp.BasicConsume{Queue: "q2", ConsumerTag: "mine"}))
		s.mustUpstream(method(1, &amqp.BasicConsumeOk{ConsumerTag: "amq.ctag-1"}))
		s.mustUpstream(method(1, &amqp.BasicConsumeOk{ConsumerTag: "mine"}))
		ch := s.st.channel(1)
		c := ch.consumers["amq.ctag-1"]
		if c == nil || c.queue != "q1" || !c.cancelOnFailover || len(c.args) != 2 {
			t.Fatalf("server-named consumer recorded as %+v", c)
		}
		if c := ch.consumers["mine"]; c == nil || c.queue != "q2" || c.cancelOnFailover {
			t.Fatalf("client-named consumer recorded as %+v", c)
		}
		got := s.mustUpstream(method(1, &amqp.BasicCancel{ConsumerTag: "mine"}))
		if (len(got) == 1) != notify {
			t.Fatalf("consumer_cancel_notify=%v: server basic.cancel forwarded %d times", notify, len(got))
		}
		if _, ok := ch.consumers["mine"]; ok {
			t.Fatal("a cancelled consumer is still recorded")
		}
	}
}

func TestStateDeliveryTagsKeepIncreasingAcrossBases(t *testing.T) {
	s := newScript(t, 1<<20, clientCaps{})
	s.mustClient(method(1, &amqp.ChannelOpen{}))
	s.mustUpstream(deliver(1, 1, "a"))
	s.mustUpstream(deliver(1, 2, "b"))
	ch := s.st.channel(1)
	if ch.lastTag != 2 {
		t.Fatalf("last tag %d, want 2", ch.lastTag)
	}
	// As after a move to another broker, whose tags start again at 1.
	ch.tagBase = ch.lastTag
	got := s.mustUpstream(deliver(1, 1, "c"))
	_, tag, _, _, _, err := amqp.PeekBasicDeliver(got[0].Payload)
	if err != nil || tag != 3 {
		t.Fatalf("client sees tag %d (%v), want 3", tag, err)
	}
}

func TestStateQosTxAndMovability(t *testing.T) {
	s := newScript(t, 1<<20, clientCaps{})
	s.mustClient(method(1, &amqp.ChannelOpen{}))
	s.mustClient(method(1, &amqp.BasicQos{PrefetchCount: 256, Global: true}))
	ch := s.st.channel(1)
	if ch.qosCount != 256 || !ch.qosGlobal {
		t.Fatalf("qos recorded as %d global=%v", ch.qosCount, ch.qosGlobal)
	}
	s.mustClient(method(1, &amqp.TxSelect{}))
	if ok, _ := s.st.movable(); !ok {
		t.Fatal("tx mode with nothing done must be movable")
	}
	s.mustClient(publish(1, "in a transaction"))
	if ok, why := s.st.movable(); ok || why == "" {
		t.Fatal("an open transaction must make the session unmovable")
	}
	s.mustClient(method(1, &amqp.TxCommit{}))
	if ok, why := s.st.movable(); !ok {
		t.Fatalf("after commit: %s", why)
	}
}

func TestStateChannelLifecycle(t *testing.T) {
	s := newScript(t, 1<<20, clientCaps{})
	s.mustClient(method(1, &amqp.ChannelOpen{}))
	s.mustClient(method(2, &amqp.ChannelOpen{}))
	s.mustClient(method(1, &amqp.ChannelClose{ReplyCode: 200}))
	s.mustUpstream(method(1, &amqp.ChannelCloseOk{}))
	if s.st.channel(1) != nil || s.st.open != 1 {
		t.Fatalf("channel 1 still open (%d open)", s.st.open)
	}
	// The broker closes channel 2; the client answers.
	s.mustUpstream(method(2, &amqp.ChannelClose{ReplyCode: 404, ReplyText: "NOT_FOUND"}))
	s.mustClient(method(2, &amqp.ChannelCloseOk{}))
	if s.st.open != 0 {
		t.Fatalf("%d channels open, want 0", s.st.open)
	}
	// Reopening a closed channel number is fine.
	s.mustClient(method(1, &amqp.ChannelOpen{}))
}

func TestStateProtocolErrors(t *testing.T) {
	cases := []struct {
		name string
		raw  []byte
		code uint16
	}{
		{"second channel.open", method(1, &amqp.ChannelOpen{}), amqp.ChannelError},
		{"header without a method", amqp.AppendContentHeaderFrame(nil, 1, 60, 1, &amqp.Properties{}), amqp.UnexpectedFrame},
		{"body without a method", amqp.AppendFrame(nil, amqp.FrameBody, 1, []byte("x")), amqp.UnexpectedFrame},
		{"method instead of a header", append(method(1, &amqp.BasicPublish{}), method(1, &amqp.BasicQos{})...), amqp.UnexpectedFrame},
		{"header of another class", append(method(1, &amqp.BasicPublish{}), amqp.AppendContentHeaderFrame(nil, 1, 50, 1, &amqp.Properties{})...), amqp.UnexpectedFrame},
		{"body longer than declared", func() []byte {
			b := method(1, &amqp.BasicPublish{})
			b = amqp.AppendContentHeaderFrame(b, 1, 60, 2, &amqp.Properties{})
			return amqp.AppendFrame(b, amqp.FrameBody, 1, []byte("xyz"))
		}(), amqp.UnexpectedFrame},
		{"unknown method", amqp.AppendFrame(nil, amqp.FrameMethod, 1, []byte{0, 99, 0, 1}), amqp.CommandInvalid},
		{"heartbeat on channel 1", []byte{amqp.FrameHeartbeat, 0, 1, 0, 0, 0, 0, amqp.FrameEnd}, amqp.UnexpectedFrame},
		{"connection.open again", method(0, &amqp.ConnectionOpen{VirtualHost: "/"}), amqp.ChannelError},
		{"channel.open on channel 0", method(0, &amqp.ChannelOpen{}), amqp.ChannelError},
		{"content header on channel 0", amqp.AppendContentHeaderFrame(nil, 0, 60, 4, &amqp.Properties{}), amqp.UnexpectedFrame},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newScript(t, 1<<20, clientCaps{})
			s.mustClient(method(1, &amqp.ChannelOpen{}))
			_, err := s.client(tc.raw)
			wantCode(t, err, tc.code)
		})
	}
}

// The words of RabbitMQ 3.10.8's closes, for the faults the proxy finds
// itself (probed on a real node; TestBadInputGetsTheBrokersClose compares
// them live).
func TestStateFaultTextsAreTheBrokers(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		raw        []byte
	}{
		{"heartbeat on channel 1", "UNEXPECTED_FRAME - type 8, all octets = <<>>", []byte{amqp.FrameHeartbeat, 0, 1, 0, 0, 0, 0, amqp.FrameEnd}},
		{"content header on channel 0", "UNEXPECTED_FRAME - type 2, all octets = <<0,60,0,0,0,0,0,0,0,0,0,4,0,0>>", amqp.AppendContentHeaderFrame(nil, 0, 60, 4, &amqp.Properties{})},
		{"body of 20 octets on channel 0", `UNEXPECTED_FRAME - type 3, first 16 octets = <<"0123456789012345">>`, amqp.AppendFrame(nil, amqp.FrameBody, 0, []byte("01234567890123456789"))},
		{"text body with escapes on channel 0", `UNEXPECTED_FRAME - type 3, all octets = <<"a\"b\\c\nd">>`, amqp.AppendFrame(nil, amqp.FrameBody, 0, []byte("a\"b\\c\nd"))},
		{"method frame of 3 octets on channel 0", "FRAME_ERROR - type 1, all octets = <<0,10,0>>: unknown_frame", amqp.AppendFrame(nil, amqp.FrameMethod, 0, []byte{0, 10, 0})},
		{"channel.open on channel 0", "CHANNEL_ERROR - unexpected method in connection state running", method(0, &amqp.ChannelOpen{})},
		{"method frame of 2 octets", "FRAME_ERROR - type 1, all octets = <<0,60>>: unknown_frame", amqp.AppendFrame(nil, amqp.FrameMethod, 1, []byte{0, 60})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newScript(t, 1<<20, clientCaps{})
			s.mustClient(method(1, &amqp.ChannelOpen{}))
			_, err := s.client(tc.raw)
			var fe *amqp.FrameError
			if !errors.As(err, &fe) || fe.Reason != tc.want {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestStateBlockedOnlyForClientsThatAsked(t *testing.T) {
	for _, asked := range []bool{false, true} {
		s := newScript(t, 1<<20, clientCaps{connectionBlocked: asked})
		got := s.mustUpstream(method(0, &amqp.ConnectionBlocked{Reason: "low on memory"}))
		got = append(got, s.mustUpstream(method(0, &amqp.ConnectionUnblocked{}))...)
		if (len(got) == 2) != asked || (len(got) == 0) == asked {
			t.Fatalf("connection.blocked capability %v: forwarded %d of 2", asked, len(got))
		}
	}
}

func TestPubLogCompactsAndReplaysInOrder(t *testing.T) {
	var l pubLog
	body := bytes.Repeat([]byte("b"), 1000)
	for seq := uint64(1); seq <= 200; seq++ {
		l.begin(seq, []byte{byte(seq)}, true)
		l.add(body, true)
	}
	// Confirm all but every tenth, out of order, forcing compaction.
	for seq := uint64(200); seq >= 1; seq-- {
		if seq%10 != 0 {
			l.confirm(seq, false)
		}
	}
	l.confirm(100, true)
	var got []uint64
	l.each(func(seq uint64, b []byte) {
		if b[0] != byte(seq) || len(b) != 1001 {
			t.Fatalf("record %d holds the wrong bytes", seq)
		}
		got = append(got, seq)
	})
	want := []uint64{110, 120, 130, 140, 150, 160, 170, 180, 190, 200}
	if len(got) != len(want) {
		t.Fatalf("replay %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("replay %v, want %v", got, want)
		}
	}
	if l.live != 10*1001 {
		t.Fatalf("live bytes %d, want %d", l.live, 10*1001)
	}
	if len(l.arena) > 2*l.live+compactMin {
		t.Fatalf("arena holds %d bytes for %d live: confirmed records are not reclaimed", len(l.arena), l.live)
	}
}

// TestPubLogCountsWithheldConfirms: a publish the broker acked waits for
// its op to be stable, and is counted withheld until then; a nack waits for
// nothing and is never counted.
func TestPubLogCountsWithheldConfirms(t *testing.T) {
	var l pubLog
	for seq := uint64(1); seq <= 4; seq++ {
		l.begin(seq, []byte{byte(seq)}, true)
		l.setTicket(seq, Ticket(seq))
	}
	l.brokerConfirm(3, true, false) // 1..3 acked by the broker
	l.brokerConfirm(4, false, true) // 4 nacked
	if l.withheld != 3 {
		t.Fatalf("withheld = %d after the broker acked 3, want 3", l.withheld)
	}
	l.brokerConfirm(2, false, false) // again: no change
	if l.withheld != 3 {
		t.Fatalf("withheld = %d after a repeated ack, want 3", l.withheld)
	}
	_, _ = l.release(nil, 1, 2) // ops 1 and 2 stable
	if l.withheld != 1 {
		t.Fatalf("withheld = %d with ops 1..2 stable, want 1", l.withheld)
	}
	_, _ = l.release(nil, 1, 4)
	if l.withheld != 0 || l.pending() != 0 {
		t.Fatalf("withheld = %d, pending %d with everything stable, want 0 and 0", l.withheld, l.pending())
	}
}
