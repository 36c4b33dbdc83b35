package amqp

import (
	"bytes"
	"testing"
)

func TestMirrorIDStampAndStripGiveBackTheOriginal(t *testing.T) {
	cases := map[string]Properties{
		"no properties":          {},
		"no headers":             {ContentType: "text/plain", ContentEncoding: "gzip", DeliveryMode: 2, MessageID: "m1"},
		"empty headers table":    {Headers: Table{}, Flags: FlagHeaders},
		"headers":                {ContentType: "a/b", Headers: Table{{Key: "k", Value: "v"}, {Key: "n", Value: int32(7)}}, Priority: 3},
		"headers of every shape": {Headers: Table{{Key: "t", Value: Table{{Key: "x", Value: []any{int8(1), "s"}}}}, {Key: "d", Value: Decimal{Scale: 2, Value: 5}}, {Key: "ts", Value: Timestamp(9)}}},
		"all properties": {ContentType: "c", ContentEncoding: "e", Headers: Table{{Key: "h", Value: true}}, DeliveryMode: 1, Priority: 9,
			CorrelationID: "co", ReplyTo: "r", Expiration: "60000", MessageID: "m", Timestamp: 1, Type: "ty", UserID: "guest", AppID: "app", ClusterID: "cl"},
	}
	for name, props := range cases {
		t.Run(name, func(t *testing.T) {
			orig := AppendContentHeader(nil, 60, 1234, &props)
			stamped, err := AppendStampedHeader(nil, orig, 0xABCDEF0123)
			if err != nil {
				t.Fatal(err)
			}
			// The stamped header decodes, with the stamp first.
			_, size, got, err := DecodeContentHeader(stamped)
			if err != nil {
				t.Fatalf("stamped header does not decode: %v", err)
			}
			if size != 1234 || len(got.Headers) == 0 || got.Headers[0].Key != MirrorIDHeader {
				t.Fatalf("stamp missing or not first: %+v", got.Headers)
			}
			if id, ok, err := PeekMirrorID(stamped); !ok || err != nil || id != 0xABCDEF0123 {
				t.Fatalf("peek: %x %v %v", id, ok, err)
			}
			out, id, ok, err := StripMirrorID(append([]byte(nil), stamped...))
			if err != nil || !ok || id != 0xABCDEF0123 {
				t.Fatalf("strip: %x %v %v", id, ok, err)
			}
			if !bytes.Equal(out, orig) {
				t.Fatalf("stripped header differs from the publisher's:\n got %x\nwant %x", out, orig)
			}
			// Nothing to strip: unchanged.
			if out2, _, ok, err := StripMirrorID(orig); ok || err != nil || !bytes.Equal(out2, orig) {
				t.Fatalf("strip of an unstamped header: ok=%v err=%v", ok, err)
			}
		})
	}
}

// The broker may rewrite the table (dead-lettering adds x-death): the stamp
// is found wherever it is.
func TestMirrorIDFoundAnywhereInTheTable(t *testing.T) {
	props := Properties{Headers: Table{{Key: "x-death", Value: []any{Table{{Key: "reason", Value: "rejected"}}}}, {Key: MirrorIDHeader, Value: int64(42)}, {Key: "z", Value: "last"}}}
	p := AppendContentHeader(nil, 60, 1, &props)
	out, id, ok, err := StripMirrorID(p)
	if err != nil || !ok || id != 42 {
		t.Fatalf("strip: %d %v %v", id, ok, err)
	}
	_, _, got, err := DecodeContentHeader(out)
	if err != nil || len(got.Headers) != 2 || got.Headers[0].Key != "x-death" || got.Headers[1].Key != "z" {
		t.Fatalf("after strip: %+v %v", got.Headers, err)
	}
}

func TestStripMirrorIDFrame(t *testing.T) {
	orig := AppendContentHeaderFrame(nil, 3, 60, 10, &Properties{DeliveryMode: 2})
	stamped, err := AppendStampedHeader(nil, orig[FrameHeaderSize:len(orig)-1], 7)
	if err != nil {
		t.Fatal(err)
	}
	frame := AppendFrame(nil, FrameHeader, 3, stamped)
	frame = append(frame, "next frame"...)
	out, id, ok, err := StripMirrorIDFrame(frame[:len(frame)-len("next frame")])
	if err != nil || !ok || id != 7 || !bytes.Equal(out, orig) {
		t.Fatalf("got %x (id %d ok %v err %v), want %x", out, id, ok, err, orig)
	}
}

func TestMirrorIDMalformedHeaders(t *testing.T) {
	good := AppendContentHeader(nil, 60, 1, &Properties{ContentType: "x", Headers: Table{{Key: "k", Value: "v"}}})
	for n := 0; n < len(good); n++ {
		if _, _, _, err := StripMirrorID(append([]byte(nil), good[:n]...)); err == nil && n < 14 {
			t.Fatalf("truncated to %d octets: no error", n)
		}
		// Never a panic, whatever the cut.
		_, _, _ = PeekMirrorID(good[:n])
		_, _ = AppendStampedHeader(nil, good[:n], 1)
	}
}

func BenchmarkStripMirrorIDFrame(b *testing.B) {
	props := Properties{ContentType: "application/json", DeliveryMode: 2, Headers: Table{{Key: "app", Value: "x"}}}
	orig := AppendContentHeader(nil, 60, 1024, &props)
	stamped, _ := AppendStampedHeader(nil, orig, 99)
	frame := AppendFrame(nil, FrameHeader, 1, stamped)
	buf := make([]byte, len(frame))
	b.ReportAllocs()
	for b.Loop() {
		copy(buf, frame)
		if _, _, ok, _ := StripMirrorIDFrame(buf); !ok {
			b.Fatal("no stamp")
		}
	}
}

func BenchmarkAppendStampedHeader(b *testing.B) {
	props := Properties{ContentType: "application/json", DeliveryMode: 2, Headers: Table{{Key: "app", Value: "x"}}}
	orig := AppendContentHeader(nil, 60, 1024, &props)
	dst := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		dst, _ = AppendStampedHeader(dst[:0], orig, 99)
	}
}

func TestStampLen(t *testing.T) {
	if stampLen != 1+len(MirrorIDHeader)+1+8 {
		t.Fatalf("stampLen %d does not match the header name", stampLen)
	}
}
