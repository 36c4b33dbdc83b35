package chaos

import (
	"cmp"
	"slices"
	"time"
)

// DrainClient is the client name that drained messages get in Result
// (duplicates, order examples).
const DrainClient = "drain"

// Drained is one message read from the queue by Drain after the run.
type Drained struct {
	// Msg is the message's id; zero when the message carries none of
	// this package's ids (Raw then holds what it carried).
	Msg         MsgID
	Redelivered bool
	Raw         string
}

// maxExamples bounds the example lists in a Result.
const maxExamples = 20

// Check computes a run's Result from its events (in recording order, as
// History.Events returns them) and the messages drained from the queue
// after the run (nil when there was no drain). It assumes the run's
// consumers are stopped: a delivery still unacked at the end is treated as
// put back in the queue. The rules are in docs/CHAOS.md.
func Check(events []Event, drain []Drained) Result {
	c := newChecker()
	// Histories from a History are in time order already; hand-made ones
	// may not be. The sort is stable, so equal times keep their order.
	events = slices.Clone(events)
	slices.SortStableFunc(events, func(a, b Event) int { return cmp.Compare(a.At, b.At) })
	for i := range events {
		c.step(&events[i])
	}
	c.endRun()
	for _, d := range drain {
		c.drained(d)
	}
	return c.result()
}

// checker is Check's state while it walks a history.
type checker struct {
	res   Result
	end   time.Duration
	msgs  map[MsgID]*msgState
	sess  map[sessKey]*session
	conns map[string][]*session // a client's sessions, in the order first seen

	producers map[string]*producerState
	consumers map[string]*consumerState
	connects  map[string]int // Connect events per client
	streams   map[streamKey]*orderStream
}

type sessKey struct {
	client string
	conn   int
}

// session is one connection of a consumer (or producer; only consumers'
// deliveries matter here).
type session struct {
	key    sessKey
	broken bool
	// pending are the deliveries on this connection that are neither
	// settled nor released yet.
	pending []*delivery
	byTag   map[uint64]*delivery
}

type delivery struct {
	msg      *msgState
	acked    bool
	settled  bool
	released bool
	tag      uint64
}

type msgState struct {
	id         MsgID
	attempts   int
	firstPub   time.Duration
	confirmed  bool
	confirmAt  time.Duration
	deliveries int
	// released counts deliveries of this message that went back to the
	// queue: their connection broke, or their consumer was cancelled,
	// before their ack was settled.
	released int
	// paid counts duplicates without the redelivered flag that were paid
	// for by an extra attempt or a release.
	paid int
	last *delivery
}

type producerState struct {
	stats           ProducerStats
	first, last     time.Duration
	pending         bool
	pendingSince    time.Duration
	lastConfirm     time.Duration
	haveLastConfirm bool
}

type consumerState struct {
	stats       ConsumerStats
	lastDeliver time.Duration
	delivered   bool
}

type streamKey struct {
	consumer, producer string
}

// orderStream is what one consumer received from one producer: the latest
// first-publish time among its fresh deliveries.
type orderStream struct {
	maxFirstPub time.Duration
	maxMsg      MsgID
	any         bool
}

func newChecker() *checker {
	return &checker{
		msgs:      map[MsgID]*msgState{},
		sess:      map[sessKey]*session{},
		conns:     map[string][]*session{},
		producers: map[string]*producerState{},
		consumers: map[string]*consumerState{},
		connects:  map[string]int{},
		streams:   map[streamKey]*orderStream{},
	}
}

func (c *checker) msg(id MsgID) *msgState {
	m := c.msgs[id]
	if m == nil {
		m = &msgState{id: id}
		c.msgs[id] = m
	}
	return m
}

func (c *checker) session(k sessKey) *session {
	s := c.sess[k]
	if s == nil {
		s = &session{key: k, byTag: map[uint64]*delivery{}}
		c.sess[k] = s
		c.conns[k.client] = append(c.conns[k.client], s)
	}
	return s
}

func (c *checker) producer(id string) *producerState {
	p := c.producers[id]
	if p == nil {
		p = &producerState{stats: ProducerStats{ID: id}}
		c.producers[id] = p
	}
	return p
}

func (c *checker) consumer(id string) *consumerState {
	s := c.consumers[id]
	if s == nil {
		s = &consumerState{stats: ConsumerStats{ID: id}}
		c.consumers[id] = s
	}
	return s
}

func (c *checker) step(e *Event) {
	c.res.Events++
	c.end = e.At
	if p := c.producers[e.Client]; p != nil {
		p.last = e.At
	}
	switch e.Kind {
	case KindPublish:
		c.res.Attempts++
		m := c.msg(e.Msg)
		m.attempts++
		p := c.producer(e.Client)
		p.last = e.At
		switch m.attempts {
		case 1:
			m.firstPub = e.At
			c.res.Published++
			p.stats.Published++
			if p.stats.Published == 1 {
				p.first = e.At
			}
		case 2:
			c.res.Resent++
		}
		if !p.pending {
			p.pending, p.pendingSince = true, e.At
		}
	case KindConfirm:
		m := c.msg(e.Msg)
		p := c.producer(e.Client)
		p.last = e.At
		if !m.confirmed {
			m.confirmed, m.confirmAt = true, e.At
			c.res.Confirmed++
			p.stats.Confirmed++
		}
		if p.pending {
			p.stats.LongestWait.widen(p.pendingSince, e.At)
			p.pending = false
		}
		since := p.first
		if p.haveLastConfirm {
			since = p.lastConfirm
		}
		p.stats.LongestNoConfirm.widen(since, e.At)
		p.lastConfirm, p.haveLastConfirm = e.At, true
	case KindNack:
		c.res.Nacks++
		c.producer(e.Client).stats.Nacks++
	case KindPublishFailed:
		c.res.PublishFailed++
	case KindConnect:
		for _, s := range c.conns[e.Client] {
			if s.key.conn < e.Conn {
				c.breakSession(s)
			}
		}
		c.session(sessKey{e.Client, e.Conn})
		c.connects[e.Client]++
	case KindDisconnect:
		c.breakSession(c.session(sessKey{e.Client, e.Conn}))
	case KindDeliver:
		if e.Msg.IsZero() { // the workload puts what it found in Err
			c.unknown(e.Err)
		}
		c.deliver(e.Client, e.Conn, e.At, e.Msg, e.Tag, e.Redelivered, false)
	case KindAck:
		if d := c.session(sessKey{e.Client, e.Conn}).byTag[e.Tag]; d != nil {
			d.acked = true
		}
	case KindSettled:
		s := c.session(sessKey{e.Client, e.Conn})
		s.pending = slices.DeleteFunc(s.pending, func(d *delivery) bool {
			if d.acked && d.tag <= e.Tag {
				d.settled = true
				return true
			}
			return false
		})
	case KindCancel:
		c.consumer(e.Client).stats.Cancels++
		c.release(c.session(sessKey{e.Client, e.Conn}), false)
	case KindFault, KindHeal:
		c.res.Faults = append(c.res.Faults, *e)
	}
}

// breakSession marks a connection gone: its deliveries whose ack was not
// settled may be back in the queue.
func (c *checker) breakSession(s *session) {
	if s.broken {
		return
	}
	s.broken = true
	c.release(s, false)
}

// release puts s's pending deliveries back (all of them, or with
// onlyUnacked those never acked).
func (c *checker) release(s *session, onlyUnacked bool) {
	for _, d := range s.pending {
		if onlyUnacked && d.acked {
			continue
		}
		d.released = true
		d.msg.released++
	}
	s.pending = s.pending[:0]
}

// endRun closes the sessions still open: the consumers stopped cleanly, so
// the broker processed their acks and put back what was unacked.
func (c *checker) endRun() {
	for _, s := range c.sess {
		if !s.broken {
			c.release(s, true)
		}
	}
	for _, p := range c.producers {
		if p.pending {
			p.stats.LongestWait.widen(p.pendingSince, p.last)
		}
		if p.stats.Published > 0 {
			since := p.first
			if p.haveLastConfirm {
				since = p.lastConfirm
			}
			p.stats.LongestNoConfirm.widen(since, p.last)
		}
	}
}

func (c *checker) drained(d Drained) {
	c.res.Drained++
	if d.Msg.IsZero() {
		c.unknown(d.Raw)
		return
	}
	if dl := c.deliver(DrainClient, 0, c.end, d.Msg, 0, d.Redelivered, true); dl != nil {
		dl.acked, dl.settled = true, true
	}
}

// deliver classifies one delivery (of the run, or drained) and returns it,
// or nil for a message this history never published.
func (c *checker) deliver(client string, conn int, at time.Duration, id MsgID, tag uint64, redelivered, drain bool) *delivery {
	if !drain {
		c.res.Deliveries++
		cs := c.consumer(client)
		cs.stats.Deliveries++
		if redelivered {
			cs.stats.Redelivered++
		}
		if cs.delivered {
			cs.stats.LongestGap.widen(cs.lastDeliver, at)
		}
		cs.lastDeliver, cs.delivered = at, true
	}
	if id.IsZero() {
		return nil // counted by the caller
	}
	m := c.msgs[id]
	if m == nil || m.attempts == 0 {
		c.unknown(id.String())
		return nil
	}
	d := &delivery{msg: m, tag: tag}
	if !drain {
		s := c.session(sessKey{client, conn})
		s.pending = append(s.pending, d)
		s.byTag[tag] = d
	}
	first := m.deliveries == 0
	if first {
		c.res.Delivered++
	} else {
		c.duplicate(m, client, conn, at, redelivered)
	}
	m.deliveries++
	m.last = d
	// Order is judged on a message's first delivery only: a later copy
	// (a re-sent attempt the broker enqueued late, a released delivery
	// coming back) has no place in the publish order and is counted as
	// a duplicate instead.
	if first && !redelivered {
		c.checkOrder(client, m, at)
	}
	return d
}

func (c *checker) unknown(example string) {
	c.res.Unknown++
	if len(c.res.UnknownExamples) < maxExamples {
		c.res.UnknownExamples = append(c.res.UnknownExamples, example)
	}
}

// duplicate classifies a delivery of a message delivered before. A copy
// flagged redelivered is expected. One without the flag must be paid for:
// each extra publish attempt may have made one more copy, and each earlier
// delivery that went back to the queue (released) may come again.
func (c *checker) duplicate(m *msgState, client string, conn int, at time.Duration, redelivered bool) {
	switch {
	case redelivered:
		c.res.ExpectedRedelivered++
	case m.paid < m.attempts-1:
		m.paid++
		c.res.ExpectedResent++
	case m.paid < m.attempts-1+m.released:
		m.paid++
		c.res.ExpectedReleased++
	default:
		c.res.UnexpectedCount++
		if len(c.res.Unexpected) < maxExamples {
			c.res.Unexpected = append(c.res.Unexpected, Duplicate{
				Msg: m.id, Consumer: client, Conn: conn, At: at, Nth: m.deliveries + 1,
			})
		}
	}
}

// checkOrder reports m delivered (fresh) to client after a fresh delivery
// there of a message from the same producer that was first published only
// after m was confirmed — so m was in the queue ahead of it.
func (c *checker) checkOrder(client string, m *msgState, at time.Duration) {
	k := streamKey{client, m.id.Producer}
	st := c.streams[k]
	if st == nil {
		st = &orderStream{}
		c.streams[k] = st
	}
	if st.any && m.confirmed && m.confirmAt < st.maxFirstPub {
		c.res.OrderViolations++
		c.producer(m.id.Producer).stats.OrderViolations++
		if len(c.res.OrderExamples) < maxExamples {
			c.res.OrderExamples = append(c.res.OrderExamples, OrderViolation{
				Consumer: client, Msg: m.id, After: st.maxMsg, At: at,
			})
		}
	}
	if !st.any || m.firstPub > st.maxFirstPub {
		st.maxFirstPub, st.maxMsg, st.any = m.firstPub, m.id, true
	}
}

func (c *checker) result() Result {
	r := c.res
	r.Duration = c.end
	ids := make([]MsgID, 0, len(c.msgs))
	for id, m := range c.msgs {
		if m.attempts > 0 {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, compareMsgID)
	for _, id := range ids {
		m := c.msgs[id]
		switch {
		case !m.confirmed:
			if m.deliveries > 0 {
				r.UnconfirmedDelivered++
			}
		case m.deliveries == 0:
			r.Lost = append(r.Lost, id)
		case !m.last.acked:
			r.Dropped = append(r.Dropped, id)
		}
	}
	for id, n := range c.connects {
		if p := c.producers[id]; p != nil {
			p.stats.Connects = n
		} else {
			c.consumer(id).stats.Connects = n
		}
	}
	for _, p := range c.producers {
		r.Producers = append(r.Producers, p.stats)
	}
	slices.SortFunc(r.Producers, func(a, b ProducerStats) int { return cmp.Compare(a.ID, b.ID) })
	for _, s := range c.consumers {
		r.Consumers = append(r.Consumers, s.stats)
	}
	slices.SortFunc(r.Consumers, func(a, b ConsumerStats) int { return cmp.Compare(a.ID, b.ID) })
	return r
}

func compareMsgID(a, b MsgID) int {
	if c := cmp.Compare(a.Producer, b.Producer); c != 0 {
		return c
	}
	return cmp.Compare(a.Seq, b.Seq)
}
