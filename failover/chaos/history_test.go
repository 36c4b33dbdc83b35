package chaos

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestMsgID(t *testing.T) {
	for _, id := range []MsgID{{"p", 1}, {"prod-0", 42}, {"a-b-c", 18446744073709551615}} {
		got, err := ParseMsgID(id.String())
		if err != nil || got != id {
			t.Errorf("ParseMsgID(%q) = %v, %v", id.String(), got, err)
		}
	}
	for _, s := range []string{"", "p", "-1", "p-", "p-x", "p-0", "p-1 "} {
		if id, err := ParseMsgID(s); !errors.Is(err, ErrBadMsgID) {
			t.Errorf("ParseMsgID(%q) = %v, %v; want ErrBadMsgID", s, id, err)
		}
	}
	if !(MsgID{}).IsZero() || (MsgID{"p", 1}).IsZero() {
		t.Error("IsZero")
	}
}

func TestMessageRoundTrip(t *testing.T) {
	id := MsgID{"prod-3", 17}
	m := message(id, 2, 100)
	if len(m.Body) != 100 || m.MessageId != "prod-3-17" || m.DeliveryMode != 2 {
		t.Fatalf("message = %+v", m)
	}
	if got, _ := messageID(m.MessageId, m.Body); got != id {
		t.Errorf("from MessageId: %v", got)
	}
	if got, _ := messageID("", m.Body); got != id {
		t.Errorf("from the body: %v", got)
	}
	if got, raw := messageID("", []byte("hello world")); !got.IsZero() || raw != "hello" {
		t.Errorf("foreign body: %v %q", got, raw)
	}
	// A body shorter than the id's text still carries the id.
	if m := message(id, 1, 1); string(m.Body) != "prod-3-17 attempt=1 " {
		t.Errorf("short body %q", m.Body)
	}
}

func TestHistoryConcurrent(t *testing.T) {
	h := NewHistory(nil)
	const writers, each = 8, 500
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				h.Publish("p", 1, MsgID{"p", uint64(w*each + i + 1)}, 1)
			}
		})
	}
	wg.Wait()
	ev := h.Events()
	if len(ev) != writers*each || h.Len() != len(ev) {
		t.Fatalf("%d events, want %d", len(ev), writers*each)
	}
	if !slices.IsSortedFunc(ev, func(a, b Event) int { return int(a.At - b.At) }) {
		t.Error("events not in time order")
	}
	seen := map[MsgID]bool{}
	for _, e := range ev {
		seen[e.Msg] = true
	}
	if len(seen) != writers*each {
		t.Errorf("%d distinct messages", len(seen))
	}
}

func TestHistoryClockAndHelpers(t *testing.T) {
	now := time.Duration(0)
	h := NewHistory(func() time.Duration { now += time.Millisecond; return now })
	id := MsgID{"p", 1}
	h.Connect("p", 1, "127.0.0.1:1")
	h.Publish("p", 1, id, 1)
	h.PublishFailed("p", 1, id, errors.New("gone"))
	h.Disconnect("p", 1, errors.New("gone"))
	h.Publish("p", 2, id, 2)
	h.Nack("p", 2, id)
	h.Confirm("p", 2, id)
	h.Deliver("c", 1, id, 7, true)
	h.Ack("c", 1, id, 7)
	h.Settled("c", 1, 7)
	h.Cancel("c", 1)
	h.Fault("kill", "n0")
	h.Heal("kill", "n0")
	ev := h.Events()
	kinds := make([]Kind, len(ev))
	for i, e := range ev {
		kinds[i] = e.Kind
		if e.At != time.Duration(i+1)*time.Millisecond {
			t.Errorf("event %d at %v", i, e.At)
		}
	}
	want := []Kind{KindConnect, KindPublish, KindPublishFailed, KindDisconnect, KindPublish, KindNack,
		KindConfirm, KindDeliver, KindAck, KindSettled, KindCancel, KindFault, KindHeal}
	if !slices.Equal(kinds, want) {
		t.Fatalf("kinds %v, want %v", kinds, want)
	}
	if s := ev[7].String(); s != "    0.008s deliver        c#1 p-1 tag=7 redelivered" {
		t.Errorf("String() = %q", s)
	}
	if s := Kind(99).String(); s != "kind(99)" {
		t.Errorf("Kind(99) = %q", s)
	}
}
