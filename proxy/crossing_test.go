package proxy

import (
	"testing"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// step is one frame through the state machine: from the client (c) or the
// broker (b), and whether the proxy passes it on.
type step struct {
	from string // "c" or "b"
	raw  []byte
	fwd  bool
}

func c(raw []byte, fwd bool) step { return step{"c", raw, fwd} }
func b(raw []byte, fwd bool) step { return step{"b", raw, fwd} }

func chClose(ch uint16, code uint16) []byte {
	return method(ch, &amqp.ChannelClose{ReplyCode: code, ReplyText: "x"})
}
func chCloseOk(ch uint16) []byte { return method(ch, &amqp.ChannelCloseOk{}) }
func chOpen(ch uint16) []byte    { return method(ch, &amqp.ChannelOpen{}) }
func chOpenOk(ch uint16) []byte  { return method(ch, &amqp.ChannelOpenOk{}) }
func qos(ch uint16) []byte       { return method(ch, &amqp.BasicQos{PrefetchCount: 1}) }

// publishParts is basic.publish, its header and its body, apart.
func publishParts(ch uint16, body string) (m, h, bd []byte) {
	m = method(ch, &amqp.BasicPublish{Exchange: "missing", RoutingKey: "k"})
	h = amqp.AppendContentHeaderFrame(nil, ch, 60, uint64(len(body)), &amqp.Properties{})
	bd = amqp.AppendFrame(nil, amqp.FrameBody, ch, []byte(body))
	return m, h, bd
}

// TestStateChannelCrossings plays every order in which the two sides'
// channel.close, close-ok, channel.open and in-flight frames can meet at
// the proxy. None is a connection error; what is dropped is what RabbitMQ's
// closing channel ignores; the channel is forgotten (and its number free)
// exactly when the broker forgets it.
func TestStateChannelCrossings(t *testing.T) {
	pm, ph, pb := publishParts(1, "lost")
	cases := []struct {
		name  string
		steps []step
		open  []uint16 // channels the proxy tracks at the end
		stale int      // close-oks still owed for forgotten channels
	}{
		{"client closes, broker answers", []step{
			c(chClose(1, 200), true), b(chCloseOk(1), true),
		}, nil, 0},
		{"broker closes, client answers", []step{
			b(chClose(1, 404), true), c(chCloseOk(1), true),
		}, nil, 0},
		{"both close, broker's close-ok first (the issue)", []step{
			c(pm, true), c(ph, true), c(pb, true), c(chClose(1, 200), true),
			b(chClose(1, 404), true), b(chCloseOk(1), true),
			c(chCloseOk(1), true),
		}, nil, 0},
		{"both close, client's close-ok first", []step{
			c(chClose(1, 200), true), b(chClose(1, 404), true),
			c(chCloseOk(1), true), b(chCloseOk(1), true),
		}, nil, 0},
		{"both close, client's close-ok crosses a new channel.open", []step{
			c(chClose(1, 200), true), b(chClose(1, 404), true),
			c(chCloseOk(1), true), c(chOpen(1), true),
			b(chCloseOk(1), true), b(chOpenOk(1), true),
			c(qos(1), true),
		}, []uint16{1}, 0},
		{"broker closes, client's close-ok then a new channel.open", []step{
			b(chClose(1, 404), true), c(chCloseOk(1), true), c(chOpen(1), true), b(chOpenOk(1), true),
		}, []uint16{1}, 0},
		{"client reopens before the broker's close-ok", []step{
			c(chClose(1, 200), true), c(chOpen(1), true), c(qos(1), true),
			b(chCloseOk(1), true), b(chOpenOk(1), true),
		}, []uint16{1}, 0},
		{"broker closes while a publish is on the wire", []step{
			c(pm, true), b(chClose(1, 404), true), c(ph, true), c(pb, true), c(chCloseOk(1), true),
		}, nil, 0},
		{"methods and content after the broker's close are dropped", []step{
			b(chClose(1, 404), true), c(qos(1), false), c(pm, false), c(ph, false), c(pb, false),
			c(chCloseOk(1), true),
		}, nil, 0},
		{"a publish in flight after the broker's close is dropped, then the crossing close", []step{
			b(chClose(1, 406), true), c(pm, false), c(ph, false), c(pb, false),
			c(chClose(1, 200), true), b(chCloseOk(1), true), c(chCloseOk(1), true),
		}, nil, 0},
		{"frames after the client's own close are dropped", []step{
			c(chClose(1, 200), true), c(qos(1), false), c(pm, false), c(ph, false), c(pb, false),
			b(chCloseOk(1), true),
		}, nil, 0},
		{"broker frames in flight before its close-ok pass", []step{
			c(chClose(1, 200), true), b(deliver(1, 1, "m"), true), b(chCloseOk(1), true),
		}, nil, 0},
		{"a second close from the client goes to the broker", []step{
			c(chClose(1, 200), true), c(chClose(1, 200), true), b(chCloseOk(1), true), b(chCloseOk(1), true),
		}, nil, 0},
		{"close-ok with no close pending goes to the broker", []step{
			c(chCloseOk(1), true),
		}, []uint16{1}, 0},
		{"frames on a channel never opened go to the broker", []step{
			c(qos(7), true), c(amqp.AppendFrame(nil, amqp.FrameBody, 7, []byte("x")), true),
		}, []uint16{1}, 0},
		{"close-ok on a forgotten channel goes to the broker", []step{
			c(chClose(1, 200), true), b(chCloseOk(1), true), c(chCloseOk(1), true),
		}, nil, 0},
		{"the broker's close-ok on a forgotten channel goes to the client", []step{
			b(chCloseOk(9), true),
		}, []uint16{1}, 0},
		{"two channels: closing one leaves the other alone", []step{
			c(chOpen(2), true), b(chOpenOk(2), true),
			c(pm, true), c(ph, true), c(pb, true), c(chClose(1, 200), true),
			c(method(2, &amqp.ExchangeDeclare{Exchange: "e", Type: "direct"}), true),
			b(chClose(1, 404), true), b(chCloseOk(1), true), c(chCloseOk(1), true),
			b(method(2, &amqp.ExchangeDeclareOk{}), true),
		}, []uint16{2}, 0},
		{"a channel.open on a number above channel_max goes to the broker", []step{
			c(chOpen(4000), true),
		}, []uint16{1, 4000}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newScript(t, 1<<20, clientCaps{})
			s.mustClient(chOpen(1))
			s.mustUpstream(chOpenOk(1))
			for i, st := range tc.steps {
				var got []amqp.Frame
				var err error
				if st.from == "c" {
					got, err = s.client(st.raw)
				} else {
					got, err = s.upstream(st.raw)
				}
				if err != nil {
					t.Fatalf("step %d (%s): %v", i, st.from, err)
				}
				want := 0
				if st.fwd {
					want = len(frames(t, st.raw))
				}
				if len(got) != want {
					t.Fatalf("step %d (%s): forwarded %d frames, want %d", i, st.from, len(got), want)
				}
			}
			var open []uint16
			for _, ch := range s.st.channels {
				if ch != nil {
					open = append(open, ch.id)
				}
			}
			if len(open) != len(tc.open) || s.st.open != len(tc.open) {
				t.Fatalf("open channels %v (count %d), want %v", open, s.st.open, tc.open)
			}
			for i := range open {
				if open[i] != tc.open[i] {
					t.Fatalf("open channels %v, want %v", open, tc.open)
				}
				if ch := s.st.channel(open[i]); ch.closing() {
					t.Fatalf("channel %d still closing", open[i])
				}
			}
			stale := 0
			for _, n := range s.st.staleCloseOks {
				stale += n
			}
			if stale != tc.stale {
				t.Fatalf("%d close-oks owed, want %d", stale, tc.stale)
			}
		})
	}
}

// A crossing in a session that replicates: publishes the broker ignores on
// a closing channel are not tracked (no confirm waits for them).
func TestStateDroppedPublishIsNotUnconfirmed(t *testing.T) {
	s := newScript(t, 1<<20, clientCaps{})
	s.mustClient(chOpen(1))
	s.mustClient(method(1, &amqp.ConfirmSelect{}))
	s.mustUpstream(chClose(1, 406))
	if got := s.mustClient(publish(1, "late")); len(got) != 0 {
		t.Fatalf("forwarded %d frames of a publish on a channel the broker closed", len(got))
	}
	if s.st.pendingSize != 0 {
		t.Fatalf("%d octets unconfirmed, want 0", s.st.pendingSize)
	}
	s.mustClient(chCloseOk(1))
	if s.st.open != 0 {
		t.Fatalf("%d open", s.st.open)
	}
}

// A session that moves to another broker leaves its closing channels
// behind: the client's close is answered by the proxy, and the client's
// close-ok to the old broker's close is taken by the proxy (the new broker
// never knew the channel).
func TestStateClosingChannelsLeftByAMove(t *testing.T) {
	for _, tc := range []struct {
		name    string
		before  []step // on the old leg
		answer  bool   // the proxy answers the client's close
		after   []step // on the new leg
		tracked bool   // the channel is still tracked after the move
	}{
		{"client closing", []step{c(chClose(1, 200), true)}, true, nil, false},
		{"broker closing", []step{b(chClose(1, 404), true)}, false, []step{c(chCloseOk(1), false)}, true},
		{"both closing", []step{c(chClose(1, 200), true), b(chClose(1, 404), true)}, true, []step{c(chCloseOk(1), false)}, true},
		{"broker closing, the client's close crosses it on the new leg", []step{b(chClose(1, 404), true)}, false,
			[]step{c(chClose(1, 200), false), c(chCloseOk(1), false)}, true},
		{"broker closing, the client opens the number again on the new leg", []step{b(chClose(1, 404), true)}, false,
			[]step{c(chOpen(1), true), b(chOpenOk(1), true), c(qos(1), true), c(chClose(1, 200), true), b(chCloseOk(1), true)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newScript(t, 1<<20, clientCaps{})
			s.mustClient(chOpen(1))
			s.mustUpstream(chOpenOk(1))
			play := func(steps []step) {
				for i, st := range steps {
					var got []amqp.Frame
					var err error
					if st.from == "c" {
						got, err = s.client(st.raw)
					} else {
						got, err = s.upstream(st.raw)
					}
					if err != nil || (len(got) > 0) != st.fwd {
						t.Fatalf("step %d (%s): forwarded %d, err %v; want forwarded %v", i, st.from, len(got), err, st.fwd)
					}
				}
			}
			play(tc.before)
			if got := s.st.leaveClosing(s.st.channel(1)); got != tc.answer {
				t.Fatalf("answer the client's close: %v, want %v", got, tc.answer)
			}
			if (s.st.channel(1) != nil) != tc.tracked {
				t.Fatalf("tracked after the move: %v, want %v", s.st.channel(1) != nil, tc.tracked)
			}
			play(tc.after)
			if s.st.channel(1) != nil || s.st.open != 0 {
				t.Fatalf("channel 1 still tracked (%d open)", s.st.open)
			}
			s.mustClient(chOpen(1)) // the number is free on the new leg
		})
	}
}
