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

// A front stamp has the core stamp's layout: taking its key turns it into
// the core's stamp in place, the same bytes AppendStampedHeader makes, and
// stripping that gives back the publisher's header.
func TestFrontStampBecomesTheMirrorIDStamp(t *testing.T) {
	cases := map[string]Properties{
		"no headers":                            {ContentType: "text/plain", DeliveryMode: 2},
		"headers":                               {Headers: Table{{Key: "k", Value: "v"}}, Priority: 3},
		"a client's own x-mirror-pk after ours": {Headers: Table{{Key: FrontKeyHeader, Value: int64(5)}}},
	}
	for name, props := range cases {
		t.Run(name, func(t *testing.T) {
			orig := AppendContentHeader(nil, 60, 10, &props)
			front, err := AppendFrontStamp(nil, orig, 0x1122334455667788)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, h, err := DecodeContentHeader(front); err != nil || h.Headers[0].Key != FrontKeyHeader {
				t.Fatalf("front-stamped header: %v %+v", err, h.Headers)
			}
			if _, ok, _ := PeekMirrorID(front); ok {
				t.Fatal("a front stamp read as an x-mirror-id")
			}
			key, ok, err := TakeFrontKey(front, 77)
			if err != nil || !ok || key != 0x1122334455667788 {
				t.Fatalf("take: %x %v %v", key, ok, err)
			}
			want, _ := AppendStampedHeader(nil, orig, 77)
			if !bytes.Equal(front, want) {
				t.Fatalf("turned stamp differs from the core's:\n got %x\nwant %x", front, want)
			}
			out, id, ok, err := StripMirrorID(front)
			if err != nil || !ok || id != 77 || !bytes.Equal(out, orig) {
				t.Fatalf("strip after take: id %d ok %v err %v", id, ok, err)
			}
		})
	}
}

// Only a front stamp in first place is taken: a header without one (or
// with the client's own field of that name further in) is left alone.
func TestTakeFrontKeyLeavesOtherHeadersAlone(t *testing.T) {
	for name, props := range map[string]Properties{
		"no headers":            {DeliveryMode: 2},
		"other first":           {Headers: Table{{Key: "a", Value: int64(1)}, {Key: FrontKeyHeader, Value: int64(2)}}},
		"x-mirror-pk of a type": {Headers: Table{{Key: FrontKeyHeader, Value: "text"}}},
	} {
		h := AppendContentHeader(nil, 60, 1, &props)
		orig := append([]byte(nil), h...)
		if _, ok, err := TakeFrontKey(h, 9); ok || err != nil || !bytes.Equal(h, orig) {
			t.Fatalf("%s: ok=%v err=%v changed=%v", name, ok, err, !bytes.Equal(h, orig))
		}
	}
	if _, _, err := TakeFrontKey([]byte{0, 60}, 1); err == nil {
		t.Fatal("a truncated header gave no error")
	}
}
