package chaos

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Kind is what an Event records.
type Kind uint8

// The kinds of events. Client is the producer's or consumer's id, Conn the
// number of its connection (1 for the first; Connect starts the next), Msg
// the message.
const (
	// KindPublish: a producer sent basic.publish of Msg, try Attempt (1
	// for the first send, +1 for each re-send after a nack or a lost
	// connection).
	KindPublish Kind = iota + 1
	// KindConfirm: the broker (through the sidecar) acked the publish of
	// Msg: it is confirmed.
	KindConfirm
	// KindNack: the broker nacked the publish of Msg (it will be re-sent).
	KindNack
	// KindPublishFailed: the connection or channel failed while the
	// publish of Msg was unconfirmed; its outcome is unknown. Err says why.
	KindPublishFailed
	// KindDeliver: a consumer received Msg (basic.deliver, or basic.get-ok
	// in a drain) with delivery tag Tag and the Redelivered flag.
	KindDeliver
	// KindAck: a consumer sent basic.ack for delivery Tag (of Msg). AMQP
	// does not answer an ack, so the broker may not have had it yet.
	KindAck
	// KindSettled: a synchronous round trip on the consumer's channel
	// (a passive queue.declare) came back after every ack up to Tag was
	// sent: the broker has processed those acks.
	KindSettled
	// KindCancel: the consumer received basic.cancel from the server
	// (x-cancel-on-ha-failover) and consumes again.
	KindCancel
	// KindConnect: the client opened connection Conn to Addr — the first,
	// or a reconnect after an error.
	KindConnect
	// KindDisconnect: the client's connection Conn failed (Err); it will
	// connect again. A clean stop records nothing.
	KindDisconnect
	// KindFault: the runner injected fault Name on Node.
	KindFault
	// KindHeal: the runner healed fault Name on Node.
	KindHeal
)

var kindNames = [...]string{
	KindPublish:       "publish",
	KindConfirm:       "confirm",
	KindNack:          "nack",
	KindPublishFailed: "publish-failed",
	KindDeliver:       "deliver",
	KindAck:           "ack",
	KindSettled:       "settled",
	KindCancel:        "cancel",
	KindConnect:       "connect",
	KindDisconnect:    "disconnect",
	KindFault:         "fault",
	KindHeal:          "heal",
}

func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// MsgID names one message of a run: the producer that made it and its
// sequence number there (1, 2, …). Its text form, "<producer>-<seq>", is
// carried in the message's MessageId property and at the start of its body,
// so every copy of a message is recognisable.
type MsgID struct {
	Producer string
	Seq      uint64
}

func (id MsgID) String() string { return id.Producer + "-" + strconv.FormatUint(id.Seq, 10) }

// IsZero reports whether id names no message.
func (id MsgID) IsZero() bool { return id.Producer == "" && id.Seq == 0 }

// ErrBadMsgID is returned by ParseMsgID for text that is not "<producer>-<seq>".
var ErrBadMsgID = errors.New("chaos: not a message id")

// ParseMsgID parses the text form of a MsgID. The producer id may itself
// contain '-'; the sequence is after the last one.
func ParseMsgID(s string) (MsgID, error) {
	i := strings.LastIndexByte(s, '-')
	if i <= 0 {
		return MsgID{}, fmt.Errorf("%w: %q", ErrBadMsgID, s)
	}
	seq, err := strconv.ParseUint(s[i+1:], 10, 64)
	if err != nil || seq == 0 {
		return MsgID{}, fmt.Errorf("%w: %q", ErrBadMsgID, s)
	}
	return MsgID{Producer: s[:i], Seq: seq}, nil
}

// Event is one thing that happened in a run. Only the fields its Kind
// names are set.
type Event struct {
	// At is the time since the run's start, from the run's Clock.
	At   time.Duration
	Kind Kind
	// Client is the producer's or consumer's id.
	Client string
	// Conn numbers the client's connections from 1.
	Conn    int
	Msg     MsgID
	Attempt int
	// Tag is the delivery tag (Deliver, Ack, Settled), per connection.
	Tag         uint64
	Redelivered bool
	// Addr is the address connected to (Connect).
	Addr string
	// Name and Node name a fault (Fault, Heal).
	Name, Node string
	// Err is the error (PublishFailed, Disconnect).
	Err string
}

func (e Event) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%9.3fs %-14s", e.At.Seconds(), e.Kind)
	if e.Client != "" {
		fmt.Fprintf(&b, " %s#%d", e.Client, e.Conn)
	}
	if !e.Msg.IsZero() {
		fmt.Fprintf(&b, " %s", e.Msg)
	}
	if e.Attempt != 0 {
		fmt.Fprintf(&b, " attempt=%d", e.Attempt)
	}
	if e.Tag != 0 {
		fmt.Fprintf(&b, " tag=%d", e.Tag)
	}
	if e.Redelivered {
		b.WriteString(" redelivered")
	}
	if e.Addr != "" {
		fmt.Fprintf(&b, " addr=%s", e.Addr)
	}
	if e.Name != "" || e.Node != "" {
		fmt.Fprintf(&b, " %s node=%s", e.Name, e.Node)
	}
	if e.Err != "" {
		fmt.Fprintf(&b, " err=%q", e.Err)
	}
	return b.String()
}

// Clock gives the time since a run's start. One clock serves a whole run
// (workload and fault injection) so their events share one time line.
type Clock func() time.Duration

// NewClock returns a Clock that starts now. It reads the monotonic clock.
func NewClock() Clock {
	start := time.Now()
	return func() time.Duration { return time.Since(start) }
}

// History records a run's events. Its methods are safe for concurrent use;
// recording is one append under a mutex, and the clock is read under the
// same mutex, so Events are in time order. Memory grows with the run
// (a few hundred bytes per event), bounded by its length and rate.
type History struct {
	clock Clock

	mu     sync.Mutex
	events []Event
}

// NewHistory returns an empty history that stamps events with clock
// (NewClock() when nil).
func NewHistory(clock Clock) *History {
	if clock == nil {
		clock = NewClock()
	}
	return &History{clock: clock}
}

// Now is the history's clock.
func (h *History) Now() time.Duration { return h.clock() }

// Record stamps e with the clock (ignoring e.At) and appends it.
func (h *History) Record(e Event) {
	h.mu.Lock()
	e.At = h.clock()
	h.events = append(h.events, e)
	h.mu.Unlock()
}

// Events returns a copy of the events recorded so far, in time order.
func (h *History) Events() []Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Event(nil), h.events...)
}

// EventsSince returns a copy of the events recorded from index i on (0
// for all) and the index to ask from next time, so a poller reads each
// event once.
func (h *History) EventsSince(i int) ([]Event, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	i = min(max(i, 0), len(h.events))
	return append([]Event(nil), h.events[i:]...), len(h.events)
}

// Len is the number of events recorded so far.
func (h *History) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.events)
}

// WaitQuiet waits until h has recorded nothing for quiet (say, consumers
// have caught up after StopProducers), or ctx is done.
func (h *History) WaitQuiet(ctx context.Context, quiet time.Duration) error {
	tick := time.NewTicker(max(quiet/10, time.Millisecond))
	defer tick.Stop()
	n, since := h.Len(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		if m := h.Len(); m != n {
			n, since = m, time.Now()
		} else if time.Since(since) >= quiet {
			return nil
		}
	}
}

// Publish records an attempt to publish id.
func (h *History) Publish(producer string, conn int, id MsgID, attempt int) {
	h.Record(Event{Kind: KindPublish, Client: producer, Conn: conn, Msg: id, Attempt: attempt})
}

// Confirm records the broker's ack of id's publish.
func (h *History) Confirm(producer string, conn int, id MsgID) {
	h.Record(Event{Kind: KindConfirm, Client: producer, Conn: conn, Msg: id})
}

// Nack records the broker's nack of id's publish.
func (h *History) Nack(producer string, conn int, id MsgID) {
	h.Record(Event{Kind: KindNack, Client: producer, Conn: conn, Msg: id})
}

// PublishFailed records that id's publish has an unknown outcome.
func (h *History) PublishFailed(producer string, conn int, id MsgID, err error) {
	h.Record(Event{Kind: KindPublishFailed, Client: producer, Conn: conn, Msg: id, Err: errText(err)})
}

// Deliver records a delivery of id to consumer.
func (h *History) Deliver(consumer string, conn int, id MsgID, tag uint64, redelivered bool) {
	h.Record(Event{Kind: KindDeliver, Client: consumer, Conn: conn, Msg: id, Tag: tag, Redelivered: redelivered})
}

// Ack records that consumer sent basic.ack for delivery tag (of id).
func (h *History) Ack(consumer string, conn int, id MsgID, tag uint64) {
	h.Record(Event{Kind: KindAck, Client: consumer, Conn: conn, Msg: id, Tag: tag})
}

// Settled records that every ack consumer sent on conn up to tag has
// reached the broker.
func (h *History) Settled(consumer string, conn int, tag uint64) {
	h.Record(Event{Kind: KindSettled, Client: consumer, Conn: conn, Tag: tag})
}

// Cancel records a basic.cancel from the server to consumer.
func (h *History) Cancel(consumer string, conn int) {
	h.Record(Event{Kind: KindCancel, Client: consumer, Conn: conn})
}

// Connect records that client opened connection conn to addr.
func (h *History) Connect(client string, conn int, addr string) {
	h.Record(Event{Kind: KindConnect, Client: client, Conn: conn, Addr: addr})
}

// Disconnect records that client's connection conn failed.
func (h *History) Disconnect(client string, conn int, err error) {
	h.Record(Event{Kind: KindDisconnect, Client: client, Conn: conn, Err: errText(err)})
}

// Fault records that the runner injected fault name on node.
func (h *History) Fault(name, node string) {
	h.Record(Event{Kind: KindFault, Name: name, Node: node})
}

// Heal records that the runner healed fault name on node.
func (h *History) Heal(name, node string) {
	h.Record(Event{Kind: KindHeal, Name: name, Node: node})
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
