package chaos

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// Helpers that write histories by hand: times in milliseconds, messages
// of producer "p" by sequence number.

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func pid(seq uint64) MsgID { return MsgID{Producer: "p", Seq: seq} }

func connect(t int, client string, conn int) Event {
	return Event{At: ms(t), Kind: KindConnect, Client: client, Conn: conn, Addr: "a"}
}

func disconnect(t int, client string, conn int) Event {
	return Event{At: ms(t), Kind: KindDisconnect, Client: client, Conn: conn, Err: "boom"}
}

func pub(t int, conn int, seq uint64, attempt int) Event {
	return Event{At: ms(t), Kind: KindPublish, Client: "p", Conn: conn, Msg: pid(seq), Attempt: attempt}
}

func conf(t int, conn int, seq uint64) Event {
	return Event{At: ms(t), Kind: KindConfirm, Client: "p", Conn: conn, Msg: pid(seq)}
}

func failed(t int, conn int, seq uint64) Event {
	return Event{At: ms(t), Kind: KindPublishFailed, Client: "p", Conn: conn, Msg: pid(seq), Err: "boom"}
}

func deliver(t int, c string, conn int, seq, tag uint64, redelivered bool) Event {
	return Event{At: ms(t), Kind: KindDeliver, Client: c, Conn: conn, Msg: pid(seq), Tag: tag, Redelivered: redelivered}
}

func ack(t int, c string, conn int, seq, tag uint64) Event {
	return Event{At: ms(t), Kind: KindAck, Client: c, Conn: conn, Msg: pid(seq), Tag: tag}
}

func settled(t int, c string, conn int, tag uint64) Event {
	return Event{At: ms(t), Kind: KindSettled, Client: c, Conn: conn, Tag: tag}
}

func cancelled(t int, c string, conn int) Event {
	return Event{At: ms(t), Kind: KindCancel, Client: c, Conn: conn}
}

// published returns events publishing and confirming messages 1..n from
// t on (10 ms apart), on the producer's connection 1.
func published(t, n int) []Event {
	ev := []Event{connect(t, "p", 1)}
	for i := 1; i <= n; i++ {
		ev = append(ev, pub(t+10*i, 1, uint64(i), 1), conf(t+10*i+5, 1, uint64(i)))
	}
	return ev
}

// consumed returns events delivering, acking and settling messages
// first..last to consumer c on conn from t on, tags from 1.
func consumed(t int, c string, conn int, first, last uint64) []Event {
	var ev []Event
	tag := uint64(0)
	for seq := first; seq <= last; seq++ {
		tag++
		ev = append(ev, deliver(t, c, conn, seq, tag, false), ack(t+1, c, conn, seq, tag))
		t += 10
	}
	return append(ev, settled(t, c, conn, tag))
}

func history(parts ...[]Event) []Event { return slices.Concat(parts...) }

func TestCheckClean(t *testing.T) {
	ev := history(published(0, 3), []Event{connect(0, "c", 1)}, consumed(100, "c", 1, 1, 3))
	// The producer records a confirm after the consumer got the message.
	ev = append(ev, pub(200, 1, 4, 1), deliver(201, "c", 1, 4, 4, false), ack(202, "c", 1, 4, 4), conf(203, 1, 4))
	r := Check(ev, nil)
	if !r.Valid() {
		t.Fatalf("clean run invalid:\n%s", r)
	}
	if r.Published != 4 || r.Confirmed != 4 || r.Delivered != 4 || r.Deliveries != 4 || r.ExpectedDuplicates() != 0 || r.UnconfirmedDelivered != 0 {
		t.Errorf("counts: %s", r)
	}
	if len(r.Producers) != 1 || r.Producers[0].Connects != 1 || len(r.Consumers) != 1 || r.Consumers[0].Connects != 1 {
		t.Errorf("clients: %+v %+v", r.Producers, r.Consumers)
	}
}

func TestCheckLost(t *testing.T) {
	// 2 is confirmed and never delivered.
	ev := history(published(0, 3), []Event{deliver(100, "c", 1, 1, 1, false), ack(101, "c", 1, 1, 1),
		deliver(110, "c", 1, 3, 2, false), ack(111, "c", 1, 3, 2)})
	r := Check(ev, nil)
	if r.Valid() || !slices.Equal(r.Lost, []MsgID{pid(2)}) {
		t.Fatalf("want p-2 lost:\n%s", r)
	}
	if !strings.Contains(r.String(), "lost: p-2") || !strings.Contains(r.String(), "INVALID") {
		t.Errorf("report does not name the loss:\n%s", r)
	}
	// Found by the drain, it is not lost.
	r = Check(ev, []Drained{{Msg: pid(2)}})
	if !r.Valid() || r.Drained != 1 || r.Delivered != 3 {
		t.Fatalf("drained p-2 still counted lost:\n%s", r)
	}
}

func TestCheckUnconfirmed(t *testing.T) {
	ev := []Event{
		connect(0, "p", 1), pub(1, 1, 1, 1), pub(2, 1, 2, 1), failed(3, 1, 1), failed(3, 1, 2),
		disconnect(3, "p", 1),
		deliver(10, "c", 1, 2, 1, false), ack(11, "c", 1, 2, 1),
	}
	r := Check(ev, nil)
	if !r.Valid() || r.Confirmed != 0 || r.UnconfirmedDelivered != 1 || r.PublishFailed != 2 || len(r.Lost) != 0 {
		t.Fatalf("unconfirmed messages: %s", r)
	}
}

func TestCheckDropped(t *testing.T) {
	// 1 is delivered, the connection breaks before the ack, and it never
	// comes back: the broker dropped an unacked message.
	ev := history(published(0, 1), []Event{
		connect(0, "c", 1), deliver(100, "c", 1, 1, 1, false), disconnect(101, "c", 1), connect(102, "c", 2),
	})
	r := Check(ev, nil)
	if r.Valid() || !slices.Equal(r.Dropped, []MsgID{pid(1)}) || len(r.Lost) != 0 {
		t.Fatalf("want p-1 dropped:\n%s", r)
	}
	// Redelivered later, all is well.
	ev = append(ev, deliver(110, "c", 2, 1, 1, true), ack(111, "c", 2, 1, 1))
	if r := Check(ev, nil); !r.Valid() || r.ExpectedRedelivered != 1 {
		t.Fatalf("redelivered after the break:\n%s", r)
	}
	// An unacked delivery on a consumer that stopped cleanly went back to
	// the queue: the drain must find it.
	ev = history(published(0, 1), []Event{connect(0, "c", 1), deliver(100, "c", 1, 1, 1, false)})
	if r := Check(ev, nil); len(r.Dropped) != 1 {
		t.Fatalf("unacked at the end and not drained:\n%s", r)
	}
	if r := Check(ev, []Drained{{Msg: pid(1), Redelivered: true}}); !r.Valid() || r.ExpectedRedelivered != 1 {
		t.Fatalf("unacked at the end and drained:\n%s", r)
	}
}

func TestCheckDuplicates(t *testing.T) {
	base := func() []Event {
		return history(published(0, 1), []Event{connect(0, "c", 1)})
	}
	for _, tc := range []struct {
		name                                 string
		events                               []Event
		drain                                []Drained
		redelivered, resent, released, unexp int
	}{{
		name: "redelivered flag",
		events: history(base(), []Event{
			deliver(100, "c", 1, 1, 1, false), ack(101, "c", 1, 1, 1), settled(102, "c", 1, 1),
			deliver(200, "c", 1, 1, 2, true), ack(201, "c", 1, 1, 2),
		}),
		redelivered: 1,
	}, {
		name: "acked and settled, delivered again fresh",
		events: history(base(), []Event{
			deliver(100, "c", 1, 1, 1, false), ack(101, "c", 1, 1, 1), settled(102, "c", 1, 1),
			deliver(200, "c", 1, 1, 2, false), ack(201, "c", 1, 1, 2),
		}),
		unexp: 1,
	}, {
		name: "ack settled, then the connection broke",
		events: history(base(), []Event{
			deliver(100, "c", 1, 1, 1, false), ack(101, "c", 1, 1, 1), settled(102, "c", 1, 1),
			disconnect(150, "c", 1), connect(160, "c", 2),
			deliver(200, "c", 2, 1, 1, false), ack(201, "c", 2, 1, 1),
		}),
		unexp: 1,
	}, {
		name: "connection broke before the ack was settled",
		events: history(base(), []Event{
			deliver(100, "c", 1, 1, 1, false), ack(101, "c", 1, 1, 1),
			connect(160, "c", 2), // no Disconnect recorded: the next Connect ends conn 1
			deliver(200, "c", 2, 1, 1, false), ack(201, "c", 2, 1, 1),
		}),
		released: 1,
	}, {
		name: "settle covered a lower tag only",
		events: history(base(), []Event{
			deliver(100, "c", 1, 1, 5, false), ack(101, "c", 1, 1, 5), settled(102, "c", 1, 4),
			disconnect(150, "c", 1), connect(160, "c", 2),
			deliver(200, "c", 2, 1, 1, false), ack(201, "c", 2, 1, 1),
		}),
		released: 1,
	}, {
		name: "settle before the ack does not count",
		events: history(base(), []Event{
			deliver(100, "c", 1, 1, 1, false), settled(101, "c", 1, 1), ack(102, "c", 1, 1, 1),
			disconnect(150, "c", 1), connect(160, "c", 2),
			deliver(200, "c", 2, 1, 1, false), ack(201, "c", 2, 1, 1),
		}),
		released: 1,
	}, {
		name: "one break pays for one duplicate",
		events: history(base(), []Event{
			deliver(100, "c", 1, 1, 1, false), ack(101, "c", 1, 1, 1),
			disconnect(150, "c", 1), connect(160, "c", 2),
			deliver(200, "c", 2, 1, 1, false), ack(201, "c", 2, 1, 1), settled(202, "c", 2, 1),
			deliver(300, "c", 2, 1, 2, false), ack(301, "c", 2, 1, 2),
		}),
		released: 1, unexp: 1,
	}, {
		name: "consumer cancelled before the ack was settled",
		events: history(base(), []Event{
			deliver(100, "c", 1, 1, 1, false), ack(101, "c", 1, 1, 1), cancelled(110, "c", 1),
			deliver(200, "c", 1, 1, 2, false), ack(201, "c", 1, 1, 2),
		}),
		released: 1,
	}, {
		name: "re-sent publish: one extra copy each",
		events: history([]Event{
			connect(0, "p", 1), pub(1, 1, 1, 1), failed(2, 1, 1), disconnect(2, "p", 1),
			connect(3, "p", 2), pub(4, 2, 1, 2), conf(5, 2, 1),
			connect(0, "c", 1),
			deliver(100, "c", 1, 1, 1, false), ack(101, "c", 1, 1, 1),
			deliver(110, "c", 1, 1, 2, false), ack(111, "c", 1, 1, 2),
			deliver(120, "c", 1, 1, 3, false), ack(121, "c", 1, 1, 3),
		}),
		resent: 1, unexp: 1,
	}, {
		name: "other consumer, while the first still holds it",
		events: history(base(), []Event{
			connect(0, "d", 1),
			deliver(100, "c", 1, 1, 1, false),
			deliver(110, "d", 1, 1, 1, false), ack(111, "d", 1, 1, 1),
			ack(120, "c", 1, 1, 1),
		}),
		unexp: 1,
	}, {
		name: "drained again after a settled ack",
		events: history(base(), []Event{
			deliver(100, "c", 1, 1, 1, false), ack(101, "c", 1, 1, 1), settled(102, "c", 1, 1),
		}),
		drain: []Drained{{Msg: pid(1)}},
		unexp: 1,
	}, {
		name: "drained again, flagged",
		events: history(base(), []Event{
			deliver(100, "c", 1, 1, 1, false), ack(101, "c", 1, 1, 1), settled(102, "c", 1, 1),
		}),
		drain:       []Drained{{Msg: pid(1), Redelivered: true}},
		redelivered: 1,
	}, {
		name: "drained after a clean stop with the ack unsettled",
		events: history(base(), []Event{
			deliver(100, "c", 1, 1, 1, false), ack(101, "c", 1, 1, 1),
		}),
		drain: []Drained{{Msg: pid(1)}},
		unexp: 1,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			r := Check(tc.events, tc.drain)
			if r.ExpectedRedelivered != tc.redelivered || r.ExpectedResent != tc.resent ||
				r.ExpectedReleased != tc.released || r.UnexpectedCount != tc.unexp {
				t.Fatalf("got redelivered %d resent %d released %d unexpected %d, want %d %d %d %d\n%s",
					r.ExpectedRedelivered, r.ExpectedResent, r.ExpectedReleased, r.UnexpectedCount,
					tc.redelivered, tc.resent, tc.released, tc.unexp, r)
			}
			if r.Valid() != (tc.unexp == 0) {
				t.Fatalf("Valid() = %v with %d unexpected", r.Valid(), tc.unexp)
			}
			if tc.unexp > 0 && (len(r.Unexpected) != tc.unexp || r.Unexpected[0].Msg != pid(1)) {
				t.Fatalf("Unexpected = %v", r.Unexpected)
			}
		})
	}
}

func TestCheckWindows(t *testing.T) {
	ev := []Event{
		connect(0, "p", 1),
		pub(100, 1, 1, 1), conf(110, 1, 1),
		pub(200, 1, 2, 1), pub(300, 1, 3, 1), failed(400, 1, 2), failed(400, 1, 3), disconnect(400, "p", 1),
		connect(1500, "p", 2), pub(1500, 2, 2, 2), pub(1500, 2, 3, 2), conf(1600, 2, 2), conf(1610, 2, 3),
		pub(1700, 2, 4, 1), // never confirmed: the producer gave up at its last event
		failed(1900, 2, 4),
		connect(0, "c", 1),
		deliver(120, "c", 1, 1, 1, false), ack(121, "c", 1, 1, 1),
		deliver(1620, "c", 1, 2, 2, false), ack(1621, "c", 1, 2, 2),
		deliver(1630, "c", 1, 3, 3, false), ack(1631, "c", 1, 3, 3),
	}
	r := Check(ev, nil)
	p := r.Producers[0]
	if want := (Window{Start: ms(200), Len: ms(1400)}); p.LongestWait != want {
		t.Errorf("LongestWait = %v, want %v", p.LongestWait, want)
	}
	if want := (Window{Start: ms(110), Len: ms(1490)}); p.LongestNoConfirm != want {
		t.Errorf("LongestNoConfirm = %v, want %v", p.LongestNoConfirm, want)
	}
	if p.Connects != 2 || p.Published != 4 || p.Confirmed != 3 {
		t.Errorf("producer = %+v", p)
	}
	if want := (Window{Start: ms(120), Len: ms(1500)}); r.Consumers[0].LongestGap != want {
		t.Errorf("LongestGap = %v, want %v", r.Consumers[0].LongestGap, want)
	}
	if r.Resent != 2 || r.Attempts != 6 {
		t.Errorf("Resent %d Attempts %d", r.Resent, r.Attempts)
	}

	// A producer that is never confirmed waits from its first publish to
	// its last event.
	r = Check([]Event{connect(0, "p", 1), pub(50, 1, 1, 1), pub(80, 1, 2, 1), failed(950, 1, 1)}, nil)
	if want := (Window{Start: ms(50), Len: ms(900)}); r.Producers[0].LongestWait != want || r.Producers[0].LongestNoConfirm != want {
		t.Errorf("never confirmed: %+v", r.Producers[0])
	}
}

func TestCheckOrder(t *testing.T) {
	// 1 is confirmed at 15 before 2 is published at 20: the queue holds
	// 1 before 2, yet c gets 2 first.
	ev := history(published(0, 2), []Event{
		connect(0, "c", 1),
		deliver(100, "c", 1, 2, 1, false), ack(101, "c", 1, 2, 1),
		deliver(110, "c", 1, 1, 2, false), ack(111, "c", 1, 1, 2),
	})
	r := Check(ev, nil)
	if r.OrderViolations != 1 || r.Producers[0].OrderViolations != 1 || !r.Valid() {
		t.Fatalf("want one order violation, still valid:\n%s", r)
	}
	if o := r.OrderExamples[0]; o.Msg != pid(1) || o.After != pid(2) || o.Consumer != "c" {
		t.Errorf("example = %v", o)
	}
	// Redelivered: not a violation.
	ev[len(ev)-2].Redelivered = true
	if r := Check(ev, nil); r.OrderViolations != 0 {
		t.Errorf("redelivered counted:\n%s", r)
	}
	// Two consumers each in order: none.
	ev = history(published(0, 2), []Event{
		deliver(100, "d", 1, 2, 1, false), ack(101, "d", 1, 2, 1),
		deliver(110, "c", 1, 1, 1, false), ack(111, "c", 1, 1, 1),
	})
	if r := Check(ev, nil); r.OrderViolations != 0 {
		t.Errorf("two consumers counted:\n%s", r)
	}
	// Published concurrently (2 before 1 was confirmed): either order.
	ev = []Event{
		pub(0, 1, 1, 1), pub(1, 1, 2, 1), conf(5, 1, 1), conf(6, 1, 2),
		deliver(100, "c", 1, 2, 1, false), ack(101, "c", 1, 2, 1),
		deliver(110, "c", 1, 1, 2, false), ack(111, "c", 1, 1, 2),
	}
	if r := Check(ev, nil); r.OrderViolations != 0 {
		t.Errorf("concurrent publishes counted:\n%s", r)
	}
	// A late copy of a re-sent message (attempt 1 stuck in a frozen
	// broker, enqueued after attempt 2 was confirmed and delivered) is a
	// duplicate paid by the re-send, not an order violation.
	ev = []Event{
		pub(0, 1, 1, 1), failed(50, 1, 1), pub(60, 2, 1, 2), conf(65, 2, 1),
		pub(70, 2, 2, 1), conf(75, 2, 2),
		deliver(100, "c", 1, 1, 1, false), ack(101, "c", 1, 1, 1),
		deliver(110, "c", 1, 2, 2, false), ack(111, "c", 1, 2, 2),
		deliver(120, "c", 1, 1, 3, false), ack(121, "c", 1, 1, 3),
	}
	if r := Check(ev, nil); r.OrderViolations != 0 || r.ExpectedResent != 1 || !r.Valid() {
		t.Errorf("a late copy counted as out of order:\n%s", r)
	}
	// In the drain too.
	ev = published(0, 2)
	if r := Check(ev, []Drained{{Msg: pid(2)}, {Msg: pid(1)}}); r.OrderViolations != 1 || r.OrderExamples[0].Consumer != DrainClient {
		t.Errorf("drain order:\n%s", r)
	}
}

func TestCheckUnknown(t *testing.T) {
	ev := history(published(0, 1), []Event{
		deliver(100, "c", 1, 1, 1, false), ack(101, "c", 1, 1, 1),
		{At: ms(110), Kind: KindDeliver, Client: "c", Conn: 1, Tag: 2, Err: "hello"},
		{At: ms(120), Kind: KindDeliver, Client: "c", Conn: 1, Msg: MsgID{"q", 7}, Tag: 3},
	})
	r := Check(ev, []Drained{{Raw: "junk"}})
	if r.Unknown != 3 || !slices.Equal(r.UnknownExamples, []string{"hello", "q-7", "junk"}) || !r.Valid() {
		t.Fatalf("unknown: %d %q\n%s", r.Unknown, r.UnknownExamples, r)
	}
}

func TestCheckSortsByTime(t *testing.T) {
	ev := history([]Event{deliver(100, "c", 1, 1, 1, false), ack(101, "c", 1, 1, 1)}, published(0, 1))
	if r := Check(ev, nil); !r.Valid() || r.UnconfirmedDelivered != 0 || r.Unknown != 0 {
		t.Fatalf("out-of-order history:\n%s", r)
	}
}

func TestCheckFaultsAndReport(t *testing.T) {
	ev := history(published(0, 2), []Event{
		{At: ms(50), Kind: KindFault, Name: "kill-broker", Node: "n0"},
		{At: ms(90), Kind: KindHeal, Name: "kill-broker", Node: "n0"},
		deliver(100, "c", 1, 1, 1, false), ack(101, "c", 1, 1, 1),
	})
	r := Check(ev, nil)
	if len(r.Faults) != 2 || r.Faults[0].Name != "kill-broker" {
		t.Fatalf("faults: %v", r.Faults)
	}
	s := r.String()
	for _, want := range []string{"INVALID", "lost 1", "fault kill-broker on n0 at 0.050s", "producer p:", "consumer c:"} {
		if !strings.Contains(s, want) {
			t.Errorf("report lacks %q:\n%s", want, s)
		}
	}
	row := r.MarkdownRow("kill")
	if strings.Count(row, "|") != strings.Count(strings.SplitN(MarkdownHeader, "\n", 2)[0], "|") {
		t.Errorf("row and header differ in columns:\n%s\n%s", MarkdownHeader, row)
	}
	if !strings.HasPrefix(row, "| kill | 0.1s | 2 | 2 | 1 |") || !strings.HasSuffix(row, "| **no** |") {
		t.Errorf("row = %s", row)
	}
}
