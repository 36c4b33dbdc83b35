package amqp

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// sampleStream is a protocol header and a mix of frames on several channels.
func sampleStream() ([]byte, [][]byte) {
	var frames [][]byte
	add := func(f []byte) { frames = append(frames, f) }
	add(AppendMethodFrame(nil, 0, &ConnectionStartOk{ClientProperties: sampleTable(), Mechanism: "PLAIN", Response: "\x00guest\x00guest", Locale: "en_US"}))
	add(AppendMethodFrame(nil, 1, &BasicPublish{Exchange: "ex", RoutingKey: "rk"}))
	all := allProperties()
	add(AppendContentHeaderFrame(nil, 1, ClassBasic, 5000, &all))
	add(AppendFrame(nil, FrameBody, 1, bytes.Repeat([]byte{'b'}, 5000)))
	add(HeartbeatFrame)
	add(AppendFrame(nil, FrameBody, 2, nil))
	add(AppendMethodFrame(nil, 65535, &BasicAck{DeliveryTag: 3}))
	stream := append([]byte(nil), ProtocolHeader[:]...)
	for _, f := range frames {
		stream = append(stream, f...)
	}
	return stream, frames
}

func readAll(t *testing.T, r *Reader, want [][]byte) {
	t.Helper()
	if h, err := r.ReadProtocolHeader(); err != nil || h != ProtocolHeader {
		t.Fatalf("protocol header %q, %v", h, err)
	}
	for i, w := range want {
		f, err := r.ReadFrame()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !bytes.Equal(f.Raw, w) || f.Type != w[0] || f.Channel != uint16(w[1])<<8|uint16(w[2]) || !bytes.Equal(f.Payload, w[7:len(w)-1]) {
			t.Fatalf("frame %d: %x, want %x", i, f.Raw, w)
		}
	}
	if f, err := r.ReadFrame(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last frame: %x, %v, want io.EOF", f.Raw, err)
	}
}

func TestReaderOneByteAtATime(t *testing.T) {
	stream, frames := sampleStream()
	r := NewReader(iotest.OneByteReader(bytes.NewReader(stream)), 0)
	r.SetMaxFrameSize(131072)
	readAll(t, r, frames)
}

func TestReaderDataErrReader(t *testing.T) {
	stream, frames := sampleStream()
	r := NewReader(iotest.DataErrReader(bytes.NewReader(stream)), 0)
	r.SetMaxFrameSize(131072)
	readAll(t, r, frames)
}

// splitReader returns the stream in two reads split at a given position.
type splitReader struct {
	parts [][]byte
}

func (s *splitReader) Read(p []byte) (int, error) {
	for len(s.parts) > 0 && len(s.parts[0]) == 0 {
		s.parts = s.parts[1:]
	}
	if len(s.parts) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.parts[0])
	s.parts[0] = s.parts[0][n:]
	return n, nil
}

func TestReaderSplitEverywhere(t *testing.T) {
	stream, frames := sampleStream()
	for i := 0; i <= len(stream); i++ {
		r := NewReader(&splitReader{parts: [][]byte{stream[:i], stream[i:]}}, 0)
		r.SetMaxFrameSize(131072)
		readAll(t, r, frames)
	}
}

// TestReaderTruncatedEverywhere ends the stream at every position: io.EOF
// only at frame boundaries, io.ErrUnexpectedEOF inside a frame, and each
// complete frame before the cut is still returned.
func TestReaderTruncatedEverywhere(t *testing.T) {
	stream, frames := sampleStream()
	bounds := map[int]bool{8: true}
	off := 8
	for _, f := range frames {
		off += len(f)
		bounds[off] = true
	}
	for i := 8; i < 2*len(stream); i++ {
		// First one octet per read, then whole reads that bring io.EOF
		// with the last data.
		var src io.Reader
		cut := i
		if i < len(stream) {
			src = iotest.OneByteReader(bytes.NewReader(stream[:cut]))
		} else {
			cut = i - len(stream)
			if cut < 8 {
				continue
			}
			src = iotest.DataErrReader(bytes.NewReader(stream[:cut]))
		}
		r := NewReader(src, 0)
		r.SetMaxFrameSize(0)
		if _, err := r.ReadProtocolHeader(); err != nil {
			t.Fatal(err)
		}
		var err error
		n := 8
		for err == nil {
			var f Frame
			f, err = r.ReadFrame()
			n += len(f.Raw)
		}
		want := io.ErrUnexpectedEOF
		if bounds[cut] {
			want = io.EOF
		}
		if !errors.Is(err, want) || n != cut-cutRemainder(cut, bounds) {
			t.Fatalf("cut at %d: %v after %d octets, want %v", cut, err, n, want)
		}
		// The error sticks.
		if _, err2 := r.ReadFrame(); !errors.Is(err2, want) {
			t.Fatalf("cut at %d: second read %v", cut, err2)
		}
	}
}

// cutRemainder is how many octets of a partial frame precede cut.
func cutRemainder(cut int, bounds map[int]bool) int {
	for i := cut; i >= 0; i-- {
		if bounds[i] {
			return cut - i
		}
	}
	return cut
}

func TestReaderErrors(t *testing.T) {
	big := AppendFrame(nil, FrameBody, 1, make([]byte, FrameMinSize))
	badEnd := AppendFrame(nil, FrameBody, 1, []byte("x"))
	badEnd[len(badEnd)-1] = 0
	for _, c := range []struct {
		name   string
		in     []byte
		max    uint32
		reason string
	}{
		{"type", []byte{9, 0, 1, 0, 0, 0, 1, 0, FrameEnd}, FrameMinSize, "FRAME_ERROR - type 9, all octets = <<0>>: unknown_frame"},
		{"frame_max", big, FrameMinSize, "exceeds frame_max 4096"},
		{"proxy limit", []byte{3, 0, 1, 0xff, 0xff, 0xff, 0xff}, 0, "exceeds the proxy's limit"},
		{"frame-end", badEnd, FrameMinSize, `FRAME_ERROR - type 3, all octets = <<"x">>: {invalid_frame_end_marker,0}`},
	} {
		r := NewReader(bytes.NewReader(c.in), 0)
		r.SetMaxFrameSize(c.max)
		_, err := r.ReadFrame()
		var fe *FrameError
		if !errors.As(err, &fe) || fe.Code != FrameErrorCode || !strings.Contains(err.Error(), c.reason) {
			t.Errorf("%s: %v, want 501 %q", c.name, err, c.reason)
		}
	}
	for _, h := range []string{"AMQP\x00\x00\x09\x02", "AMQP\x01\x01\x08\x00", "AMQP\x01\x01\x09\x01", "AMQP\x03\x01\x00\x00"} {
		if _, err := NewReader(strings.NewReader(h), 0).ReadProtocolHeader(); !errors.Is(err, ErrBadProtocolHeader) {
			t.Errorf("bad protocol header %q: %v", h, err)
		}
	}
	// 0-9's header: RabbitMQ speaks 0-9-1 to it.
	if _, err := NewReader(strings.NewReader("AMQP\x01\x01\x00\x09"), 0).ReadProtocolHeader(); err != nil {
		t.Errorf("AMQP 0-9 header: %v", err)
	}
	if _, err := NewReader(strings.NewReader("AMQ"), 0).ReadProtocolHeader(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short protocol header: %v", err)
	}
}

// emptyReads returns no data and no error n times before each real read.
type emptyReads struct {
	r    io.Reader
	n, i int
}

func (e *emptyReads) Read(p []byte) (int, error) {
	if e.i < e.n {
		e.i++
		return 0, nil
	}
	e.i = 0
	return e.r.Read(p)
}

func TestReaderEmptyReads(t *testing.T) {
	stream, frames := sampleStream()
	r := NewReader(&emptyReads{r: iotest.OneByteReader(bytes.NewReader(stream)), n: maxEmptyReads - 1}, 0)
	r.SetMaxFrameSize(0)
	readAll(t, r, frames)

	r = NewReader(&emptyReads{r: bytes.NewReader(stream), n: maxEmptyReads}, 0)
	if _, err := r.ReadProtocolHeader(); !errors.Is(err, io.ErrNoProgress) {
		t.Errorf("a reader that never makes progress: %v", err)
	}
}

func TestReaderGrowsAndHasFrame(t *testing.T) {
	body := bytes.Repeat([]byte{'z'}, 100_000)
	stream := AppendFrame(nil, FrameBody, 1, body)
	stream = append(stream, HeartbeatFrame...)
	r := NewReader(bytes.NewReader(stream), 0)
	r.SetMaxFrameSize(131072)
	if r.MaxFrameSize() != 131072 || r.HasFrame() || r.Buffered() != 0 {
		t.Fatal("fresh reader state")
	}
	f, err := r.ReadFrame()
	if err != nil || !bytes.Equal(f.Payload, body) {
		t.Fatalf("big frame: %v", err)
	}
	if f, err = r.ReadFrame(); err != nil || f.Type != FrameHeartbeat {
		t.Fatalf("heartbeat: %v", err)
	}

	// Two small frames arrive in one read: the second is buffered whole.
	small := append(AppendFrame(nil, FrameBody, 1, []byte("ab")), HeartbeatFrame[:5]...)
	r = NewReader(&splitReader{parts: [][]byte{small, HeartbeatFrame[5:]}}, 0)
	if _, err := r.ReadFrame(); err != nil {
		t.Fatal(err)
	}
	if r.HasFrame() || r.Buffered() != 5 {
		t.Fatalf("partial heartbeat: HasFrame %v Buffered %d", r.HasFrame(), r.Buffered())
	}
	small = append(AppendFrame(nil, FrameBody, 1, []byte("ab")), HeartbeatFrame...)
	r = NewReader(bytes.NewReader(small), 0)
	if _, err := r.ReadFrame(); err != nil {
		t.Fatal(err)
	}
	if !r.HasFrame() || r.Buffered() != len(HeartbeatFrame) {
		t.Fatalf("whole heartbeat: HasFrame %v Buffered %d", r.HasFrame(), r.Buffered())
	}
}

// TestFrameStaysValid checks the documented promise: a frame's bytes stay
// as they were while the next frame is already buffered.
func TestFrameStaysValid(t *testing.T) {
	stream, frames := sampleStream()
	r := NewReader(bytes.NewReader(stream), 0)
	r.SetMaxFrameSize(0)
	if _, err := r.ReadProtocolHeader(); err != nil {
		t.Fatal(err)
	}
	prev, err := r.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(frames); i++ {
		snapshot := bytes.Clone(prev.Raw)
		if !bytes.Equal(snapshot, frames[i-1]) {
			t.Fatalf("frame %d changed before the next read", i-1)
		}
		if prev, err = r.ReadFrame(); err != nil {
			t.Fatal(err)
		}
	}
}
