package proxy

import (
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// out is the write side of one connection. The pump that forwards into it
// queues frames (raw spans of its reader's buffer, or bytes it built) and
// flushes when its reader has nothing more buffered; other goroutines
// (heartbeats, replies) write through the same lock. Queued spans that follow
// each other in memory are merged, so a read of many frames that are all
// forwarded unchanged goes out as one write, as with a bare TCP hop.
//
// Queued spans alias a reader's buffer: the pump must flush before it reads
// again (amqp.Reader keeps returned frames valid until then).
type out struct {
	mu      sync.Mutex
	conn    net.Conn
	spans   [][]byte
	nb      net.Buffers // kept here so WriteTo's argument does not escape per call
	scratch []byte      // bytes built by the proxy since the last flush
	err     error       // sticky write error
	timeout time.Duration
	// gate, when set, is asked before a write of queued frames: an error
	// discards them and fails that write (it is not sticky). The master's
	// core gates what its broker sends to clients on its authority.
	gate func() error

	// wrote is set by every flush; the heartbeat loop clears it and sends a
	// heartbeat only after an idle interval.
	wrote atomic.Bool

	// joined, for a TLS connection, gathers the spans of a flush into one
	// Write: net.Buffers would write each span as a TLS record of its own.
	joined []byte
	tls    bool
}

// maxJoined bounds the joined buffer kept between flushes.
const maxJoined = 1 << 20

func newOut(conn net.Conn, timeout time.Duration) *out {
	_, isTLS := conn.(*tls.Conn)
	return &out{conn: conn, timeout: timeout, spans: make([][]byte, 0, 64), scratch: make([]byte, 0, 4096), tls: isTLS}
}

// queueLocked adds b to the pending spans. b must stay valid until flushLocked.
func (o *out) queueLocked(b []byte) {
	if n := len(o.spans); n > 0 {
		last := o.spans[n-1]
		if len(last) > 0 && len(b) > 0 && cap(last)-len(last) >= len(b) &&
			unsafe.Pointer(unsafe.SliceData(last[len(last):cap(last)])) == unsafe.Pointer(unsafe.SliceData(b)) {
			o.spans[n-1] = last[:len(last)+len(b)]
			return
		}
	}
	o.spans = append(o.spans, b)
}

// queue queues raw bytes that stay valid until the next flush by the caller.
func (o *out) queue(b []byte) {
	o.mu.Lock()
	o.queueLocked(b)
	o.mu.Unlock()
}

// build lets fn append bytes to the scratch buffer and queues them. If the
// append moves the buffer, spans queued earlier keep the old array alive and
// stay correct.
func (o *out) build(fn func([]byte) []byte) {
	o.mu.Lock()
	start := len(o.scratch)
	o.scratch = fn(o.scratch)
	o.queueLocked(o.scratch[start:])
	o.mu.Unlock()
}

// flush writes everything queued.
func (o *out) flush() error {
	o.mu.Lock()
	err := o.flushLocked()
	o.mu.Unlock()
	return err
}

func (o *out) flushLocked() error {
	if len(o.spans) == 0 {
		return o.err
	}
	if o.gate != nil && o.err == nil {
		if err := o.gate(); err != nil {
			o.reset()
			return err
		}
	}
	if o.err != nil {
		o.reset()
		return o.err
	}
	if o.timeout > 0 {
		o.conn.SetWriteDeadline(time.Now().Add(o.timeout))
	}
	var err error
	if o.tls && len(o.spans) > 1 {
		buf := o.joined[:0]
		for _, sp := range o.spans {
			buf = append(buf, sp...)
		}
		_, err = o.conn.Write(buf)
		if cap(buf) <= maxJoined {
			o.joined = buf[:0]
		} else {
			o.joined = nil
		}
	} else {
		o.nb = o.spans
		_, err = o.nb.WriteTo(o.conn)
	}
	o.reset()
	o.wrote.Store(true)
	if err != nil {
		o.err = err
	}
	return err
}

func (o *out) reset() {
	clear(o.spans)
	o.spans = o.spans[:0]
	o.nb = nil
	o.scratch = o.scratch[:0]
}

// write queues b (copied) and flushes: for frames built by goroutines other
// than the pump, such as heartbeats and closes.
func (o *out) write(b []byte) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	start := len(o.scratch)
	o.scratch = append(o.scratch, b...)
	o.queueLocked(o.scratch[start:])
	return o.flushLocked()
}

// writeUngated writes b at once past the gate, with nothing queued before
// it (what is queued is dropped): for heartbeats and the connection's
// close, which carry nothing the gate guards.
func (o *out) writeUngated(b []byte) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	g := o.gate
	o.gate = func() error { return nil }
	defer func() { o.gate = g }()
	if len(o.spans) > 0 && g != nil && o.err == nil {
		if err := g(); err != nil {
			o.reset()
		}
	}
	start := len(o.scratch)
	o.scratch = append(o.scratch, b...)
	o.queueLocked(o.scratch[start:])
	return o.flushLocked()
}
