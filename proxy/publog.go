package proxy

import "sort"

// pubLog holds one confirm-mode channel's unconfirmed publishes, oldest
// first, as the raw frames the client sent (method, header, bodies), so they
// can be re-sent to another broker. Records live in one reused arena: in the
// steady state (publish, confirm, publish, …) nothing is allocated.
//
// Confirmed records are marked done; their bytes are garbage until the head
// passes them or a compaction copies the live records to the front, which
// happens when garbage outweighs live bytes. So the arena stays within about
// twice the live bytes plus compactMin, however confirms are ordered.
type pubLog struct {
	recs    []pubRec // by seq; recs[:head] are forgotten
	head    int
	arena   []byte
	live    int  // bytes of unconfirmed records
	garbage int  // bytes of confirmed records still in arena
	dropped bool // content was not kept (over the session bound) since the log was last empty
	// withheld counts the publishes the broker acked whose ops are not
	// stable yet: their confirms are held back from the client.
	withheld int
}

type pubRec struct {
	seq  uint64
	off  int
	n    int
	done bool // confirmed to the client

	// With replication: the op's ticket and the broker's verdict. The client
	// gets the confirm when both the broker and the ring are done.
	ticket   Ticket
	brokerOK bool
	nack     bool
}

const compactMin = 64 << 10

// begin starts the record of publish seq with its method frame and returns
// the bytes it keeps. With keep false (or once dropped) only the sequence
// number is kept.
func (l *pubLog) begin(seq uint64, frame []byte, keep bool) int {
	if !keep || l.dropped {
		l.recs = append(l.recs, pubRec{seq: seq})
		return -l.drop()
	}
	off := len(l.arena)
	l.arena = append(l.arena, frame...)
	l.recs = append(l.recs, pubRec{seq: seq, off: off, n: len(frame)})
	l.live += len(frame)
	return len(frame)
}

// add appends a content frame to the newest record and returns the bytes it
// keeps; with keep false the log drops its content and returns minus the
// bytes it released.
func (l *pubLog) add(frame []byte, keep bool) int {
	if l.dropped || len(l.recs) == l.head {
		return 0
	}
	if !keep {
		return -l.drop()
	}
	l.arena = append(l.arena, frame...)
	l.recs[len(l.recs)-1].n += len(frame)
	l.live += len(frame)
	return len(frame)
}

// drop forgets every record's content (the sequence numbers stay) and
// returns the live bytes released. The log cannot be replayed until it has
// been empty once.
func (l *pubLog) drop() int {
	freed := l.live
	for i := l.head; i < len(l.recs); i++ {
		l.recs[i].off, l.recs[i].n = 0, 0
	}
	l.arena, l.live, l.garbage, l.dropped = l.arena[:0], 0, 0, true
	return freed
}

// confirm marks seq (and, with multiple, every older one) confirmed and
// returns the live bytes released.
func (l *pubLog) confirm(seq uint64, multiple bool) int {
	live := l.recs[l.head:]
	freed := 0
	mark := func(r *pubRec) {
		if !r.done {
			r.done = true
			freed += r.n
		}
	}
	if multiple {
		for i := range live {
			if live[i].seq > seq {
				break
			}
			mark(&live[i])
		}
	} else if i := sort.Search(len(live), func(i int) bool { return live[i].seq >= seq }); i < len(live) && live[i].seq == seq {
		mark(&live[i])
	}
	l.live -= freed
	l.garbage += freed
	for l.head < len(l.recs) && l.recs[l.head].done {
		l.head++
	}
	switch {
	case l.head == len(l.recs):
		l.recs, l.head, l.arena, l.live, l.garbage, l.dropped = l.recs[:0], 0, l.arena[:0], 0, 0, false
	case l.garbage > compactMin && l.garbage > l.live:
		l.compact()
	}
	return freed
}

// compact moves the unconfirmed records to the front of both arrays.
func (l *pubLog) compact() {
	w, at := 0, 0
	for _, r := range l.recs[l.head:] {
		if r.done {
			continue
		}
		copy(l.arena[at:], l.arena[r.off:r.off+r.n]) // at <= r.off: moves left only
		r.off = at
		at += r.n
		l.recs[w] = r
		w++
	}
	l.recs, l.arena, l.head, l.garbage = l.recs[:w], l.arena[:at], 0, 0
}

// pending reports how many publishes are unconfirmed.
func (l *pubLog) pending() int {
	n := 0
	for _, r := range l.recs[l.head:] {
		if !r.done {
			n++
		}
	}
	return n
}

// each calls fn with every unconfirmed publish in order. It reports false
// when content was dropped and the publishes cannot be replayed.
func (l *pubLog) each(fn func(seq uint64, frames []byte)) bool {
	if l.dropped {
		return false
	}
	for _, r := range l.recs[l.head:] {
		if !r.done {
			fn(r.seq, l.arena[r.off:r.off+r.n])
		}
	}
	return true
}

// setTicket records the replication ticket of the newest publish, seq.
func (l *pubLog) setTicket(seq uint64, t Ticket) {
	if n := len(l.recs); n > l.head && l.recs[n-1].seq == seq {
		l.recs[n-1].ticket = t
	}
}

// brokerConfirm records the broker's ack or nack of seq (and, with
// multiple, every older one) without confirming anything to the client.
func (l *pubLog) brokerConfirm(seq uint64, multiple, nack bool) {
	live := l.recs[l.head:]
	mark := func(r *pubRec) {
		if !r.brokerOK {
			r.brokerOK, r.nack = true, nack
			if !nack {
				l.withheld++
			}
		}
	}
	if multiple {
		for i := range live {
			if live[i].seq > seq {
				break
			}
			mark(&live[i])
		}
	} else if i := sort.Search(len(live), func(i int) bool { return live[i].seq >= seq }); i < len(live) && live[i].seq == seq {
		mark(&live[i])
	}
}

// release appends to dst the confirms the client may have now: the oldest
// publishes that the broker confirmed and whose ops are stable (or that the
// broker nacked: a nack waits for nothing), as basic.ack with multiple for
// each run and basic.nack for each nack. It forgets what it released and
// returns the bytes freed.
func (l *pubLog) release(dst []byte, channel uint16, stable Ticket) ([]byte, int) {
	var runEnd uint64
	flushRun := func() {
		if runEnd != 0 {
			dst = appendConfirm(dst, channel, runEnd, true, false)
			runEnd = 0
		}
	}
	for i := l.head; i < len(l.recs); i++ {
		r := l.recs[i]
		if r.done {
			continue
		}
		if !r.brokerOK || !r.nack && r.ticket > stable {
			break
		}
		if r.nack {
			flushRun()
			dst = appendConfirm(dst, channel, r.seq, false, true)
		} else {
			runEnd = r.seq
			l.withheld--
		}
		l.recs[i].done = true
	}
	flushRun()
	freed := 0
	for l.head < len(l.recs) && l.recs[l.head].done {
		freed += l.recs[l.head].n
		l.head++
	}
	l.live -= freed
	if l.head == len(l.recs) {
		l.recs, l.head, l.arena, l.live, l.garbage, l.dropped = l.recs[:0], 0, l.arena[:0], 0, 0, false
	}
	return dst, freed
}
