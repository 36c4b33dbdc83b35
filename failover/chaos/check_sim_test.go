package chaos

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// The checker against a model: a seeded simulation of producers, a queue
// and consumers that knows the truth. It behaves as a correct broker does
// (re-sent publishes may make extra copies, a broken connection puts back
// what was not acked or whose ack may not have arrived, a cancel likewise)
// and, now and then, as a broken one: it confirms a message it never
// queued (lost), drops an unacked message on a broken connection
// (dropped), or queues again a message whose ack was settled (an
// unexpected duplicate). The checker must find exactly the injected bugs.

var simSeeds = flag.Int("chaos.seeds", 200, "seeds for TestCheckAgainstModel")

func TestCheckAgainstModel(t *testing.T) {
	var caught struct{ lost, dropped, unexpected, expected, clean int }
	for seed := range uint64(*simSeeds) {
		s := newSim(seed)
		s.run(200 + int(seed%300))
		r := Check(s.events, s.drained)
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("seed %d: "+format+"\n%s\nhistory:\n%s", append(append([]any{seed}, args...), r, s.dump())...)
		}
		if !slices.Equal(r.Lost, s.truthLost()) {
			fail("Lost = %v, want %v", r.Lost, s.truthLost())
		}
		if !slices.Equal(r.Dropped, s.truthDropped()) {
			fail("Dropped = %v, want %v", r.Dropped, s.truthDropped())
		}
		if r.UnexpectedCount != s.unexpected {
			fail("UnexpectedCount = %d, want %d", r.UnexpectedCount, s.unexpected)
		}
		if r.Published != len(s.msgs) || r.Confirmed != s.confirmed() || r.Drained != len(s.drained) {
			fail("Published %d Confirmed %d Drained %d, want %d %d %d",
				r.Published, r.Confirmed, r.Drained, len(s.msgs), s.confirmed(), len(s.drained))
		}
		if dups := r.ExpectedDuplicates() + r.UnexpectedCount; dups != s.deliveries-r.Delivered {
			fail("%d duplicates for %d deliveries of %d messages", dups, s.deliveries, r.Delivered)
		}
		if r.Valid() != (len(s.truthLost())+len(s.truthDropped())+s.unexpected == 0) {
			fail("Valid() = %v", r.Valid())
		}
		caught.lost += len(r.Lost)
		caught.dropped += len(r.Dropped)
		caught.unexpected += r.UnexpectedCount
		caught.expected += r.ExpectedDuplicates()
		if r.Valid() {
			caught.clean++
		}
	}
	t.Logf("over %d seeds: lost %d, dropped %d, unexpected %d, expected duplicates %d, valid runs %d",
		*simSeeds, caught.lost, caught.dropped, caught.unexpected, caught.expected, caught.clean)
	// The model must exercise every verdict, or the test proves little.
	if *simSeeds >= 100 && (caught.lost == 0 || caught.dropped == 0 || caught.unexpected == 0 || caught.expected == 0 || caught.clean == 0) {
		t.Errorf("the model did not exercise every case: %+v", caught)
	}
}

type simMsg struct {
	id        MsgID
	attempts  int
	confirmed bool
	inflight  bool // sent on the producer's current connection, unconfirmed
	copies    int  // copies in the queue or held by a consumer
	delivered int
	// released: some delivery went back unsettled (the checker counts it
	// as paying for a duplicate), so no bug is injected on it.
	released bool
	// consumed: delivered once, acked, settled, no copy left.
	consumed                 bool
	vanished, dropped, ghost bool
}

type simCopy struct {
	m           *simMsg
	redelivered bool
	// ghost: injected or put back from an injected copy; fresh: the
	// injected copy itself, whose delivery is unexpected.
	ghost, fresh bool
}

type simHeld struct {
	c     simCopy
	tag   uint64
	acked bool
}

type simProducer struct {
	id   string
	conn int
	next uint64
}

type simConsumer struct {
	id      string
	conn    int
	nextTag uint64
	held    []*simHeld
}

type sim struct {
	rng        *rand.Rand
	now        time.Duration
	events     []Event
	drained    []Drained
	msgs       []*simMsg
	queue      []simCopy
	producers  []*simProducer
	consumers  []*simConsumer
	deliveries int // run deliveries plus drained
	unexpected int
	// bugs: this run injects bugs (half of the seeds do).
	bugs bool
}

func newSim(seed uint64) *sim {
	s := &sim{rng: rand.New(rand.NewPCG(seed, 0x5eed))}
	s.bugs = s.chance(0.5)
	for i := range 1 + s.rng.IntN(3) {
		p := &simProducer{id: fmt.Sprintf("p%d", i), next: 1}
		s.producers = append(s.producers, p)
		s.connect(p.id, &p.conn)
	}
	for i := range 1 + s.rng.IntN(3) {
		c := &simConsumer{id: fmt.Sprintf("c%d", i)}
		s.consumers = append(s.consumers, c)
		s.connect(c.id, &c.conn)
	}
	return s
}

func (s *sim) rec(e Event) {
	s.now += time.Duration(1+s.rng.IntN(20)) * time.Millisecond
	e.At = s.now
	s.events = append(s.events, e)
}

func (s *sim) chance(p float64) bool { return s.rng.Float64() < p }

func (s *sim) connect(client string, conn *int) {
	*conn++
	s.rec(Event{Kind: KindConnect, Client: client, Conn: *conn, Addr: "a"})
}

func (s *sim) run(steps int) {
	for range steps {
		switch n := s.rng.IntN(100); {
		case n < 25:
			s.publish(s.producers[s.rng.IntN(len(s.producers))])
		case n < 40:
			s.confirm()
		case n < 43:
			s.breakProducer(s.producers[s.rng.IntN(len(s.producers))])
		case n < 65:
			s.deliver(s.consumers[s.rng.IntN(len(s.consumers))])
		case n < 80:
			s.ack(s.consumers[s.rng.IntN(len(s.consumers))])
		case n < 88:
			s.settle(s.consumers[s.rng.IntN(len(s.consumers))])
		case n < 92:
			s.breakConsumer(s.consumers[s.rng.IntN(len(s.consumers))])
		case n < 94:
			s.cancel(s.consumers[s.rng.IntN(len(s.consumers))])
		case n < 95:
			if s.bugs {
				s.ghost()
			}
		default:
			s.nack()
		}
	}
	// Consumers stop cleanly: the broker has their acks and puts back
	// what they held unacked; then the queue is drained.
	for _, c := range s.consumers {
		for _, h := range c.held {
			if h.acked {
				s.gone(h.c.m)
			} else {
				s.queue = append(s.queue, simCopy{m: h.c.m, redelivered: true, ghost: h.c.ghost})
			}
		}
		c.held = nil
	}
	for _, cp := range s.queue {
		s.drained = append(s.drained, Drained{Msg: cp.m.id, Redelivered: cp.redelivered})
		s.delivered(cp)
	}
	s.queue = nil
}

func (s *sim) publish(p *simProducer) {
	m := &simMsg{id: MsgID{Producer: p.id, Seq: p.next}}
	p.next++
	s.msgs = append(s.msgs, m)
	if s.bugs && s.chance(0.03) {
		// Bug: confirmed at once, never queued.
		s.send(p, m, false)
		m.vanished, m.inflight = true, false
		s.rec(Event{Kind: KindConfirm, Client: p.id, Conn: p.conn, Msg: m.id})
		m.confirmed = true
		return
	}
	s.send(p, m, s.chance(0.95))
}

// send records the next attempt of m; queued says whether the broker got it.
func (s *sim) send(p *simProducer, m *simMsg, queued bool) {
	m.attempts++
	m.inflight = true
	s.rec(Event{Kind: KindPublish, Client: p.id, Conn: p.conn, Msg: m.id, Attempt: m.attempts})
	if queued {
		m.copies++
		s.queue = append(s.queue, simCopy{m: m})
	}
}

func (s *sim) producerOf(m *simMsg) *simProducer {
	for _, p := range s.producers {
		if p.id == m.id.Producer {
			return p
		}
	}
	panic("no producer")
}

// confirm acks a random in-flight message that the broker holds (or held).
func (s *sim) confirm() {
	var cands []*simMsg
	for _, m := range s.msgs {
		if m.inflight && (m.copies > 0 || m.delivered > 0) {
			cands = append(cands, m)
		}
	}
	if len(cands) == 0 {
		return
	}
	m := cands[s.rng.IntN(len(cands))]
	m.inflight, m.confirmed = false, true
	s.rec(Event{Kind: KindConfirm, Client: m.id.Producer, Conn: s.producerOf(m).conn, Msg: m.id})
}

// nack refuses a random in-flight message the broker did not queue; the
// producer re-sends it.
func (s *sim) nack() {
	for _, m := range s.msgs {
		if m.inflight && m.copies == 0 && m.delivered == 0 && !m.vanished {
			p := s.producerOf(m)
			s.rec(Event{Kind: KindNack, Client: p.id, Conn: p.conn, Msg: m.id})
			s.send(p, m, s.chance(0.9))
			return
		}
	}
}

// breakProducer loses the producer's connection: its unconfirmed messages
// have an unknown outcome and are re-sent on the next one.
func (s *sim) breakProducer(p *simProducer) {
	var resend []*simMsg
	for _, m := range s.msgs {
		if m.inflight && m.id.Producer == p.id {
			s.rec(Event{Kind: KindPublishFailed, Client: p.id, Conn: p.conn, Msg: m.id, Err: "boom"})
			resend = append(resend, m)
		}
	}
	if s.chance(0.5) {
		s.rec(Event{Kind: KindDisconnect, Client: p.id, Conn: p.conn, Err: "boom"})
	}
	s.connect(p.id, &p.conn)
	for _, m := range resend {
		s.send(p, m, s.chance(0.8))
	}
}

func (s *sim) deliver(c *simConsumer) {
	if len(s.queue) == 0 || len(c.held) >= 5 {
		return
	}
	cp := s.queue[0]
	s.queue = s.queue[1:]
	c.nextTag++
	s.rec(Event{Kind: KindDeliver, Client: c.id, Conn: c.conn, Msg: cp.m.id, Tag: c.nextTag, Redelivered: cp.redelivered})
	c.held = append(c.held, &simHeld{c: cp, tag: c.nextTag})
	s.delivered(cp)
}

// delivered counts a delivery (or a drained message) of cp.
func (s *sim) delivered(cp simCopy) {
	s.deliveries++
	if cp.fresh {
		s.unexpected++
	}
	cp.m.delivered++
}

func (s *sim) ack(c *simConsumer) {
	for _, h := range c.held {
		if !h.acked {
			h.acked = true
			s.rec(Event{Kind: KindAck, Client: c.id, Conn: c.conn, Msg: h.c.m.id, Tag: h.tag})
			return
		}
	}
}

// settle confirms the acks sent so far: those messages are gone for good.
func (s *sim) settle(c *simConsumer) {
	var top uint64
	for _, h := range c.held {
		if h.acked {
			top = max(top, h.tag)
		}
	}
	if top == 0 {
		return
	}
	s.rec(Event{Kind: KindSettled, Client: c.id, Conn: c.conn, Tag: top})
	c.held = slices.DeleteFunc(c.held, func(h *simHeld) bool {
		if h.acked {
			s.gone(h.c.m)
			return true
		}
		return false
	})
}

// gone removes a copy of m for good (its ack reached the broker).
func (s *sim) gone(m *simMsg) {
	m.copies--
	// Confirmed, so never re-sent: nothing can pay for another copy.
	if m.copies == 0 && m.delivered == 1 && m.attempts == 1 && !m.released && m.confirmed && !m.inflight {
		m.consumed = true
	}
}

// release puts back what c holds: unacked copies flagged redelivered, and
// acked ones whose ack may not have arrived either gone or back (flagged
// or not: the checker must accept both). With maybeDrop, an unacked copy
// may be dropped (a bug) when nothing else could bring it back.
func (s *sim) release(c *simConsumer, maybeDrop bool) {
	for _, h := range c.held {
		m := h.c.m
		m.released = true
		switch {
		case !h.acked && maybeDrop && s.bugs && m.confirmed && m.attempts == 1 && m.copies == 1 && !h.c.ghost && s.chance(0.1):
			m.dropped = true
			m.copies--
		case !h.acked:
			s.queue = append(s.queue, simCopy{m: m, redelivered: true, ghost: h.c.ghost})
		case s.chance(0.5):
			m.copies--
		default:
			s.queue = append(s.queue, simCopy{m: m, redelivered: s.chance(0.5), ghost: h.c.ghost})
		}
	}
	c.held = nil
}

func (s *sim) breakConsumer(c *simConsumer) {
	if s.chance(0.5) {
		s.rec(Event{Kind: KindDisconnect, Client: c.id, Conn: c.conn, Err: "boom"})
	}
	s.release(c, true)
	s.connect(c.id, &c.conn)
}

func (s *sim) cancel(c *simConsumer) {
	s.rec(Event{Kind: KindCancel, Client: c.id, Conn: c.conn})
	s.release(c, false)
}

// ghost queues again a consumed message (a bug: its ack was settled).
func (s *sim) ghost() {
	for _, m := range s.msgs {
		if m.consumed && !m.ghost {
			m.ghost, m.consumed = true, false
			m.copies++
			s.queue = append(s.queue, simCopy{m: m, ghost: true, fresh: true})
			return
		}
	}
}

func (s *sim) truthLost() []MsgID {
	var ids []MsgID
	for _, m := range s.msgs {
		if m.vanished {
			ids = append(ids, m.id)
		}
	}
	slices.SortFunc(ids, compareMsgID)
	return ids
}

func (s *sim) truthDropped() []MsgID {
	var ids []MsgID
	for _, m := range s.msgs {
		if m.dropped {
			ids = append(ids, m.id)
		}
	}
	slices.SortFunc(ids, compareMsgID)
	return ids
}

func (s *sim) confirmed() int {
	n := 0
	for _, m := range s.msgs {
		if m.confirmed {
			n++
		}
	}
	return n
}

func (s *sim) dump() string {
	var b []byte
	for _, e := range s.events {
		b = append(b, e.String()...)
		b = append(b, '\n')
	}
	for _, d := range s.drained {
		b = fmt.Appendf(b, "drained %s redelivered=%v\n", d.Msg, d.Redelivered)
	}
	return string(b)
}
