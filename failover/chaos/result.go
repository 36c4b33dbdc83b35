package chaos

import (
	"fmt"
	"strings"
	"time"
)

// Result is what Check found in a run. Counts of messages count each
// message once; counts of events count each event.
type Result struct {
	// Duration is the time of the run's last event; Events their number.
	Duration time.Duration
	Events   int

	// Published is the number of messages with at least one publish
	// attempt; Attempts counts the attempts, Resent the messages sent
	// more than once.
	Published, Attempts, Resent int
	// Confirmed is the number of messages the broker acked.
	Confirmed int
	// Nacks and PublishFailed count events.
	Nacks, PublishFailed int

	// Delivered is the number of messages delivered at least once, in
	// the run or the drain; Deliveries counts the run's delivery events,
	// Drained the messages the drain read.
	Delivered, Deliveries, Drained int
	// UnconfirmedDelivered counts messages delivered but never confirmed:
	// their confirm was lost with a connection. They are fine.
	UnconfirmedDelivered int

	// Lost are the confirmed messages never delivered, in the run or the
	// drain: a broken promise (DESIGN.md §5.1).
	Lost []MsgID
	// Dropped are the confirmed messages whose last delivery was never
	// acked and that were not delivered again nor drained: the broker
	// should have put them back (§5.4).
	Dropped []MsgID

	// Duplicates that are expected: flagged redelivered; paid for by an
	// extra publish attempt; paid for by an earlier delivery that went
	// back to the queue (its connection broke, or its consumer was
	// cancelled, before its ack was settled).
	ExpectedRedelivered, ExpectedResent, ExpectedReleased int
	// UnexpectedCount counts the other duplicates; Unexpected lists the
	// first of them.
	UnexpectedCount int
	Unexpected      []Duplicate

	// Unknown counts deliveries (and drained messages) that are not
	// messages this history published: left from another run, or
	// corrupted. UnknownExamples lists the first ids (or raw texts).
	Unknown         int
	UnknownExamples []string

	// OrderViolations counts fresh deliveries of a message after a fresh
	// delivery, to the same consumer, of a message from the same
	// producer that was first published after this one was confirmed.
	// Reported, not failed: see docs/CHAOS.md.
	OrderViolations int
	OrderExamples   []OrderViolation

	Producers []ProducerStats
	Consumers []ConsumerStats
	// Faults are the Fault and Heal events, in order.
	Faults []Event
}

// Duplicate is one unexpected duplicate delivery: the Nth delivery of Msg,
// to Consumer's connection Conn, at At.
type Duplicate struct {
	Msg      MsgID
	Consumer string
	Conn     int
	At       time.Duration
	Nth      int
}

func (d Duplicate) String() string {
	return fmt.Sprintf("%s delivery #%d to %s#%d at %.3fs", d.Msg, d.Nth, d.Consumer, d.Conn, d.At.Seconds())
}

// OrderViolation is Msg delivered to Consumer at At after After, which was
// published only after Msg had been confirmed.
type OrderViolation struct {
	Consumer   string
	Msg, After MsgID
	At         time.Duration
}

func (o OrderViolation) String() string {
	return fmt.Sprintf("%s after %s to %s at %.3fs", o.Msg, o.After, o.Consumer, o.At.Seconds())
}

// Window is a stretch of a run's time line.
type Window struct {
	Start, Len time.Duration
}

// widen makes w the stretch from..to if that is longer.
func (w *Window) widen(from, to time.Duration) {
	if to-from > w.Len {
		w.Start, w.Len = from, to-from
	}
}

func (w Window) String() string {
	if w.Len == 0 {
		return "0s"
	}
	return fmt.Sprintf("%.3fs@%.1fs", w.Len.Seconds(), w.Start.Seconds())
}

// ProducerStats are one producer's figures.
type ProducerStats struct {
	ID                   string
	Published, Confirmed int
	Nacks, Connects      int
	OrderViolations      int
	// LongestWait is the longest time from a publish attempt to the
	// producer's next confirm (of any message) while it kept trying: how
	// long a publisher waited for the service.
	LongestWait Window
	// LongestNoConfirm is the longest time with no confirm at all, from
	// its first publish to its last event.
	LongestNoConfirm Window
}

// ConsumerStats are one consumer's figures.
type ConsumerStats struct {
	ID                      string
	Deliveries, Redelivered int
	Connects, Cancels       int
	// LongestGap is the longest time between two deliveries.
	LongestGap Window
}

// Valid reports whether the run kept its promises: no confirmed message
// lost or dropped, and no duplicate that nothing explains.
func (r Result) Valid() bool {
	return len(r.Lost) == 0 && len(r.Dropped) == 0 && r.UnexpectedCount == 0
}

// ExpectedDuplicates is the number of expected duplicate deliveries.
func (r Result) ExpectedDuplicates() int {
	return r.ExpectedRedelivered + r.ExpectedResent + r.ExpectedReleased
}

// LongestWait is the longest LongestWait of any producer.
func (r Result) LongestWait() Window {
	var w Window
	for _, p := range r.Producers {
		if p.LongestWait.Len > w.Len {
			w = p.LongestWait
		}
	}
	return w
}

// LongestNoConfirm is the longest LongestNoConfirm of any producer.
func (r Result) LongestNoConfirm() Window {
	var w Window
	for _, p := range r.Producers {
		if p.LongestNoConfirm.Len > w.Len {
			w = p.LongestNoConfirm
		}
	}
	return w
}

// LongestGap is the longest delivery gap of any consumer.
func (r Result) LongestGap() Window {
	var w Window
	for _, c := range r.Consumers {
		if c.LongestGap.Len > w.Len {
			w = c.LongestGap
		}
	}
	return w
}

// String is a report of several lines.
func (r Result) String() string {
	var b strings.Builder
	verdict := "VALID"
	if !r.Valid() {
		verdict = "INVALID"
	}
	fmt.Fprintf(&b, "%s: %.1fs, %d events\n", verdict, r.Duration.Seconds(), r.Events)
	fmt.Fprintf(&b, "published %d (attempts %d, resent %d), confirmed %d, nacks %d, publish failures %d\n",
		r.Published, r.Attempts, r.Resent, r.Confirmed, r.Nacks, r.PublishFailed)
	fmt.Fprintf(&b, "delivered %d (deliveries %d, drained %d), unconfirmed but delivered %d, unknown %d\n",
		r.Delivered, r.Deliveries, r.Drained, r.UnconfirmedDelivered, r.Unknown)
	fmt.Fprintf(&b, "lost %d, dropped %d\n", len(r.Lost), len(r.Dropped))
	fmt.Fprintf(&b, "duplicates: expected %d (redelivered %d, resent %d, released %d), unexpected %d\n",
		r.ExpectedDuplicates(), r.ExpectedRedelivered, r.ExpectedResent, r.ExpectedReleased, r.UnexpectedCount)
	fmt.Fprintf(&b, "order violations %d\n", r.OrderViolations)
	for _, p := range r.Producers {
		fmt.Fprintf(&b, "producer %s: published %d, confirmed %d, nacks %d, connects %d, longest wait %s, longest without confirm %s, order violations %d\n",
			p.ID, p.Published, p.Confirmed, p.Nacks, p.Connects, p.LongestWait, p.LongestNoConfirm, p.OrderViolations)
	}
	for _, c := range r.Consumers {
		fmt.Fprintf(&b, "consumer %s: deliveries %d (redelivered %d), connects %d, cancels %d, longest gap %s\n",
			c.ID, c.Deliveries, c.Redelivered, c.Connects, c.Cancels, c.LongestGap)
	}
	for _, f := range r.Faults {
		fmt.Fprintf(&b, "%s %s on %s at %.3fs\n", f.Kind, f.Name, f.Node, f.At.Seconds())
	}
	list := func(what string, n int, items []string) {
		if n == 0 {
			return
		}
		more := ""
		if n > len(items) {
			more = fmt.Sprintf(" … (%d in all)", n)
		}
		fmt.Fprintf(&b, "%s: %s%s\n", what, strings.Join(items, ", "), more)
	}
	list("lost", len(r.Lost), strs(r.Lost))
	list("dropped", len(r.Dropped), strs(r.Dropped))
	list("unexpected duplicates", r.UnexpectedCount, strs(r.Unexpected))
	list("order violations", r.OrderViolations, strs(r.OrderExamples))
	list("unknown", r.Unknown, r.UnknownExamples)
	return strings.TrimSuffix(b.String(), "\n")
}

func strs[T fmt.Stringer](xs []T) []string {
	if len(xs) > maxExamples {
		xs = xs[:maxExamples]
	}
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = x.String()
	}
	return out
}

// MarkdownHeader is the header (two lines) of a table of MarkdownRow rows.
const MarkdownHeader = "| scenario | duration | published | confirmed | lost | dropped | dup. expected | dup. unexpected | unconfirmed delivered | longest publish wait | longest without confirm | longest consumer gap | order violations | valid |\n" +
	"|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"

// MarkdownRow is one row of the table in docs/CHAOS.md for scenario name.
func (r Result) MarkdownRow(name string) string {
	valid := "yes"
	if !r.Valid() {
		valid = "**no**"
	}
	return fmt.Sprintf("| %s | %.1fs | %d | %d | %d | %d | %d | %d | %d | %.2fs | %.2fs | %.2fs | %d | %s |",
		name, r.Duration.Seconds(), r.Published, r.Confirmed, len(r.Lost), len(r.Dropped),
		r.ExpectedDuplicates(), r.UnexpectedCount, r.UnconfirmedDelivered,
		r.LongestWait().Len.Seconds(), r.LongestNoConfirm().Len.Seconds(), r.LongestGap().Len.Seconds(),
		r.OrderViolations, valid)
}
