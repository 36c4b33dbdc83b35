package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// sink is a loopback TCP connection whose far end discards everything.
func sink(t testing.TB) net.Conn {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	far, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = io.Copy(io.Discard, far) }() // until the cleanup closes far
	t.Cleanup(func() { c.Close(); far.Close() })
	return c
}

// forwardLoop is what a pump does for one batch of frames: read, track,
// queue, flush when the reader is drained.
func forwardLoop(t testing.TB, track func(amqp.Frame) (bool, error), r *amqp.Reader, o *out) {
	for {
		f, err := r.ReadFrame()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		fwd, err := track(f)
		if err != nil {
			t.Fatal(err)
		}
		if fwd {
			o.queue(f.Raw)
		}
	}
	if err := o.flush(); err != nil {
		t.Fatal(err)
	}
}

// The steady state of forwarding allocates nothing per frame: publishes in
// confirm mode (kept for replay), their confirms, deliveries and acks.
func TestForwardingDoesNotAllocate(t *testing.T) {
	s := newScript(t, 1<<20, clientCaps{})
	s.mustClient(method(1, &amqp.ChannelOpen{}))
	s.mustClient(method(1, &amqp.ConfirmSelect{}))
	body := string(bytes.Repeat([]byte("m"), 1024))
	const batch = 64
	var pubs, acks, dels, cacks []byte
	for i := 0; i < batch; i++ {
		pubs = append(pubs, publish(1, body)...)
		dels = append(dels, deliver(1, uint64(i+1), body)...)
		cacks = append(cacks, method(1, &amqp.BasicAck{DeliveryTag: uint64(i + 1)})...)
	}
	seq := uint64(0)
	o := newOut(sink(t), 0)
	src := bytes.NewReader(nil)
	r := amqp.NewReader(src, 256<<10)
	r.SetMaxFrameSize(131072)
	run := func(raw []byte, track func(amqp.Frame) (bool, error)) {
		src.Reset(raw)
		forwardLoop(t, track, r, o)
	}
	allocs := testing.AllocsPerRun(50, func() {
		run(pubs, s.st.fromClient)
		acks = acks[:0]
		seq += batch
		acks = amqp.AppendMethodFrame(acks, 1, &amqp.BasicAck{DeliveryTag: seq, Multiple: true})
		run(acks, s.st.fromUpstream)
		run(dels, s.st.fromUpstream)
		run(cacks, s.st.fromClient)
	})
	perFrame := allocs / (batch * 7)
	t.Logf("%.1f allocations per round of %d frames (%.4f per frame)", allocs, batch*7, perFrame)
	if allocs > 2 {
		t.Fatalf("forwarding allocates: %.1f allocations per round of %d frames", allocs, batch*7)
	}
}
