package amqp

import (
	"testing"
)

// loopReader returns data over and over, in reads as large as asked.
type loopReader struct {
	data []byte
	off  int
}

func (l *loopReader) Read(p []byte) (int, error) {
	n := copy(p, l.data[l.off:])
	l.off = (l.off + n) % len(l.data)
	return n, nil
}

// publishStream is many publishes as a client sends them: basic.publish, a
// content header with a few properties, a 200-octet body.
func publishStream() (stream []byte, frames int) {
	props := Properties{ContentType: "application/json", DeliveryMode: Persistent, MessageID: "m-000001", Headers: Table{{"x-mirror-id", "0123456789abcdef"}}}
	body := make([]byte, 200)
	for range 64 {
		stream = AppendMethodFrame(stream, 1, &BasicPublish{Exchange: "orders", RoutingKey: "orders.created"})
		stream = AppendContentHeaderFrame(stream, 1, ClassBasic, uint64(len(body)), &props)
		stream = AppendFrame(stream, FrameBody, 1, body)
		frames += 3
	}
	return stream, frames
}

func BenchmarkReadFrame(b *testing.B) {
	stream, frames := publishStream()
	r := NewReader(&loopReader{data: stream}, 64<<10)
	r.SetMaxFrameSize(131072)
	b.SetBytes(int64(len(stream) / frames))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.ReadFrame(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPeekBasicPublish(b *testing.B) {
	p := AppendMethod(nil, &BasicPublish{Exchange: "orders", RoutingKey: "orders.created", Mandatory: true})
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := PeekBasicPublish(p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPeekBasicDeliver(b *testing.B) {
	p := AppendMethod(nil, &BasicDeliver{ConsumerTag: "amq.ctag-0123456789abcdefghij", DeliveryTag: 123456, Exchange: "orders", RoutingKey: "orders.created"})
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, _, _, err := PeekBasicDeliver(p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPeekBasicAck(b *testing.B) {
	p := AppendMethod(nil, &BasicAck{DeliveryTag: 123456, Multiple: true})
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := PeekBasicAck(p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSetDeliveryTag(b *testing.B) {
	p := AppendMethod(nil, &BasicDeliver{ConsumerTag: "amq.ctag-0123456789abcdefghij", DeliveryTag: 123456, Exchange: "orders", RoutingKey: "orders.created"})
	b.ReportAllocs()
	var tag uint64
	for b.Loop() {
		tag++
		if err := SetDeliveryTag(p, tag); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeMethodBasicPublish(b *testing.B) {
	p := AppendMethod(nil, &BasicPublish{Exchange: "orders", RoutingKey: "orders.created", Mandatory: true})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeMethod(p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeContentHeaderWithHeaders(b *testing.B) {
	props := Properties{
		ContentType:  "application/json",
		DeliveryMode: Persistent,
		MessageID:    "m-000001",
		Timestamp:    1_700_000_000,
		Headers: Table{
			{"x-mirror-id", "0123456789abcdef"},
			{"x-retries", int32(3)},
			{"tenant", "acme"},
			{"trace", Table{{"span", uint64(77)}, {"sampled", true}}},
		},
	}
	p := AppendContentHeader(nil, ClassBasic, 200, &props)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := DecodeContentHeader(p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendMethodFrameBasicDeliver(b *testing.B) {
	m := &BasicDeliver{ConsumerTag: "amq.ctag-0123456789abcdefghij", DeliveryTag: 123456, Exchange: "orders", RoutingKey: "orders.created"}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendMethodFrame(buf[:0], 1, m)
	}
}
