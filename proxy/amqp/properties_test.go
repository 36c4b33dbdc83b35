package amqp

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func allProperties() Properties {
	return Properties{
		ContentType:     "application/json",
		ContentEncoding: "gzip",
		Headers:         sampleTable(),
		DeliveryMode:    Persistent,
		Priority:        7,
		CorrelationID:   "corr-1",
		ReplyTo:         "amq.rabbitmq.reply-to",
		Expiration:      "60000",
		MessageID:       "msg-1",
		Timestamp:       1_700_000_000,
		Type:            "order.created",
		UserID:          "guest",
		AppID:           "mirrorproxy-test",
		ClusterID:       "cluster-1",
	}
}

func TestContentHeaderRoundTrip(t *testing.T) {
	const allFlags = 0xfffc
	mixed := Properties{ContentType: "text/plain", DeliveryMode: Transient, MessageID: "m", AppID: "a"}
	emptyPresent := Properties{Flags: FlagContentType | FlagHeaders | FlagPriority | FlagTimestamp | FlagClusterID}
	for _, c := range []struct {
		name  string
		props Properties
		flags uint16
	}{
		{"all 14", allProperties(), allFlags},
		{"none", Properties{}, 0},
		{"mixed", mixed, FlagContentType | FlagDeliveryMode | FlagMessageID | FlagAppID},
		{"present but empty", emptyPresent, emptyPresent.Flags},
		{"headers only", Properties{Headers: Table{{"x-mirror-id", "abc"}}}, FlagHeaders},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := AppendContentHeader(nil, ClassBasic, 1<<33+5, &c.props)
			if f := uint16(p[12])<<8 | uint16(p[13]); f != c.flags {
				t.Fatalf("flags %04x, want %04x", f, c.flags)
			}
			class, size, got, err := DecodeContentHeader(p)
			if err != nil {
				t.Fatal(err)
			}
			if class != ClassBasic || size != 1<<33+5 {
				t.Fatalf("class %d size %d", class, size)
			}
			if got.Flags != c.flags {
				t.Fatalf("decoded Flags %04x, want %04x", got.Flags, c.flags)
			}
			want := c.props
			want.Flags = c.flags
			if c.name == "present but empty" {
				want.Headers = Table{}
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decoded %#v\nwant    %#v", got, want)
			}
			if again := AppendContentHeader(nil, class, size, &got); !bytes.Equal(again, p) {
				t.Fatalf("re-encoded %x\nwant      %x", again, p)
			}
			frame := AppendContentHeaderFrame(nil, 3, class, size, &got)
			if want := AppendFrame(nil, FrameHeader, 3, p); !bytes.Equal(frame, want) {
				t.Fatal("AppendContentHeaderFrame differs from the framed payload")
			}
			if err := ValidateProperties(&got); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestContentHeaderOrder pins the property order with a hand-built header.
func TestContentHeaderOrder(t *testing.T) {
	p := hexBytes("003c 0000 0000000000000003 f840" +
		"0474797065" + // content-type "type"
		"03656e63" + // content-encoding "enc"
		"00000004 016b 4201" + // headers {k: uint8 1}
		"02" + "05" + // delivery-mode, priority
		"0000000000000009") // timestamp
	_, size, props, err := DecodeContentHeader(p)
	if err != nil {
		t.Fatal(err)
	}
	want := Properties{ContentType: "type", ContentEncoding: "enc", Headers: Table{{"k", uint8(1)}}, DeliveryMode: 2, Priority: 5, Timestamp: 9, Flags: 0xf840}
	if size != 3 || !reflect.DeepEqual(props, want) {
		t.Fatalf("got %#v", props)
	}
}

func TestContentHeaderContinuation(t *testing.T) {
	// content-type present, continuation set, a second word naming nothing.
	p := hexBytes("003c 0000 0000000000000000 8001 0000 0161")
	_, _, props, err := DecodeContentHeader(p)
	if err != nil {
		t.Fatal(err)
	}
	if props.ContentType != "a" || props.moreFlags != 1 {
		t.Fatalf("got %#v", props)
	}
	if again := AppendContentHeader(nil, ClassBasic, 0, &props); !bytes.Equal(again, p) {
		t.Fatalf("re-encoded %x, want %x", again, p)
	}
	// Three words.
	p = hexBytes("003c 0000 0000000000000000 0001 0001 0000")
	_, _, props, err = DecodeContentHeader(p)
	if err != nil || props.moreFlags != 2 {
		t.Fatalf("%#v %v", props, err)
	}
	if again := AppendContentHeader(nil, ClassBasic, 0, &props); !bytes.Equal(again, p) {
		t.Fatalf("re-encoded %x, want %x", again, p)
	}
}

func TestContentHeaderErrors(t *testing.T) {
	for _, c := range []struct {
		name   string
		in     []byte
		code   uint16
		reason string
	}{
		{"short", hexBytes("003c 0000 00000000000000"), FrameErrorCode, "fixed part"},
		{"no flags", hexBytes("003c 0000 0000000000000000"), FrameErrorCode, "fixed part"},
		{"class", hexBytes("0032 0000 0000000000000000 0000"), UnexpectedFrame, "class 50"},
		{"weight", hexBytes("003c 0001 0000000000000000 0000"), UnexpectedFrame, "weight is 1"},
		{"bit 1", hexBytes("003c 0000 0000000000000000 0002"), SyntaxError, "15th property"},
		{"continued word names properties", hexBytes("003c 0000 0000000000000000 0001 8000 0161"), SyntaxError, "word 2"},
		{"continuation cut", hexBytes("003c 0000 0000000000000000 0001"), FrameErrorCode, "property flags"},
		{"truncated property", hexBytes("003c 0000 0000000000000000 8000 0561"), FrameErrorCode, "content-type"},
		{"trailing", hexBytes("003c 0000 0000000000000000 0000 00"), FrameErrorCode, "1 octets after"},
		{"bad headers", hexBytes("003c 0000 0000000000000000 2000 00000003 016b5a"), SyntaxError, `headers: field "k": unknown field value type 'Z'`},
		{"missing timestamp", hexBytes("003c 0000 0000000000000000 0040 0000"), FrameErrorCode, "timestamp"},
	} {
		_, _, props, err := DecodeContentHeader(c.in)
		if err == nil {
			t.Errorf("%s: decoded %#v", c.name, props)
			continue
		}
		if code := frameCode(t, err); code != c.code || !strings.Contains(err.Error(), c.reason) {
			t.Errorf("%s: %v, want %d and %q", c.name, err, c.code, c.reason)
		}
	}
	// Every cut of a full header fails with 501.
	all := allProperties()
	p := AppendContentHeader(nil, ClassBasic, 10, &all)
	for n := 0; n < len(p); n++ {
		if _, _, _, err := DecodeContentHeader(p[:n]); err == nil || frameCode(t, err) != FrameErrorCode {
			t.Fatalf("cut to %d: %v", n, err)
		}
	}
	bad := Properties{ReplyTo: strings.Repeat("r", 256)}
	if err := ValidateProperties(&bad); err == nil || !strings.Contains(err.Error(), "reply-to") {
		t.Errorf("ValidateProperties: %v", err)
	}
	bad = Properties{Headers: Table{{"x", []int{1}}}}
	if err := ValidateProperties(&bad); err == nil {
		t.Error("ValidateProperties accepted []int")
	}
}

func TestPeekContentHeader(t *testing.T) {
	all := allProperties()
	p := AppendContentHeader(nil, ClassBasic, 123456789, &all)
	class, size, err := PeekContentHeader(p)
	if err != nil || class != ClassBasic || size != 123456789 {
		t.Fatalf("%d %d %v", class, size, err)
	}
	if n := testing.AllocsPerRun(100, func() { _, _, _ = PeekContentHeader(p) }); n != 0 {
		t.Errorf("PeekContentHeader allocates %v times", n)
	}
}

func TestAppendBodyFrames(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789"), 100) // 1000 octets
	for _, c := range []struct {
		frameMax uint32
		frames   int
	}{{0, 1}, {4096, 1}, {108, 10}, {107, 11}, {1008, 1}, {1007, 2}} {
		out := AppendBodyFrames(nil, 5, body, c.frameMax)
		r := NewReader(bytes.NewReader(out), 0)
		r.SetMaxFrameSize(0)
		var got []byte
		n := 0
		for {
			f, err := r.ReadFrame()
			if err != nil {
				break
			}
			if f.Type != FrameBody || f.Channel != 5 || (c.frameMax != 0 && len(f.Raw) > int(c.frameMax)) {
				t.Fatalf("frame_max %d: bad frame %d %d %d", c.frameMax, f.Type, f.Channel, len(f.Raw))
			}
			got = append(got, f.Payload...)
			n++
		}
		if n != c.frames || !bytes.Equal(got, body) {
			t.Errorf("frame_max %d: %d frames, want %d (body equal %v)", c.frameMax, n, c.frames, bytes.Equal(got, body))
		}
	}
	if out := AppendBodyFrames(nil, 1, nil, 4096); len(out) != 0 {
		t.Error("empty body made a frame")
	}
}
