package replicate

import (
	"bytes"
	"errors"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

func sampleOps() []Op {
	header := amqp.AppendContentHeader(nil, 60, 5, &amqp.Properties{
		ContentType: "text/plain", DeliveryMode: amqp.Persistent,
		Headers: amqp.Table{{Key: "x-mirror-id", Value: uint64(1<<40 | 7)}},
	})
	declare := amqp.AppendMethod(nil, &amqp.QueueDeclare{Queue: "q1", Durable: true,
		Arguments: amqp.Table{{Key: "x-message-ttl", Value: int32(500)}}})
	return []Op{
		{Kind: OpPublish, Vhost: "/", ID: 1<<40 | 7, Exchange: "ex", RoutingKey: "rk", Mandatory: true, Header: header, Body: []byte("hello")},
		{Kind: OpPublish, Vhost: "", ID: 0, Header: []byte{}, Body: []byte{}},
		{Kind: OpPublish, Vhost: "/", ID: 3, Key: 0xfeedface12345678, Exchange: "ex", Mandatory: true, Header: header, Body: []byte("keyed")},
		{Kind: OpPublish, Vhost: "/", ID: 4, Key: 1, Header: header},
		{Kind: OpPublish, Vhost: strings.Repeat("v", 255), ID: ^uint64(0), Exchange: strings.Repeat("e", 255), RoutingKey: strings.Repeat("r", 255), Header: header, Body: bytes.Repeat([]byte{0xce}, 70000)},
		{Kind: OpAck, Vhost: "/", Queue: "q1", IDs: []uint64{3, 1, 2}},
		{Kind: OpAck, Vhost: "/", Queue: "q1"},
		{Kind: OpDrop, Vhost: "vh", Queue: "q2", IDs: []uint64{^uint64(0)}},
		{Kind: OpTopology, Vhost: "/", Method: declare},
		{Kind: OpQueueGone, Vhost: "/", Queue: "amq.gen-xyz"},
		{Kind: OpSyncStart, Vhost: "/", Queue: "q1", ID: 3, Nodes: []string{"b", "c"}},
		{Kind: OpSyncStart, Vhost: "/", Queue: "q1", ID: 4},
		{Kind: OpSyncCopy, Vhost: "/", Queue: "q1", Header: header, Body: []byte("old")},
		{Kind: OpSyncEnd, Vhost: "/", Queue: "q1", ID: 3},
		{Kind: OpSyncEnd, Vhost: "/", Queue: "q1", ID: 4, Cancelled: true},
		{Kind: OpPolicy, Vhost: "/", Name: "ha", Data: []byte(`{"pattern":"^ha\\."}`)},
		{Kind: OpPolicy, Vhost: "/", Name: "ha"},
		{Kind: OpStatus, Vhost: "/", Queue: "q1", Nodes: []string{"b"}},
		{Kind: OpPurge, Vhost: "/", Queue: "q1", IDs: []uint64{9}},
		{Kind: OpPurge, Vhost: "/", Queue: "q1"},
	}
}

// normalised clears what ParseOp returns as empty-but-present, so that a
// built op and its parse compare equal.
func normalised(op Op) Op {
	if len(op.Header) == 0 {
		op.Header = nil
	}
	if len(op.Body) == 0 {
		op.Body = nil
	}
	if len(op.Method) == 0 {
		op.Method = nil
	}
	if len(op.Data) == 0 {
		op.Data = nil
	}
	return op
}

func TestOpRoundTrip(t *testing.T) {
	for i, op := range sampleOps() {
		b := AppendOp([]byte("prefix"), &op)
		if string(b[:6]) != "prefix" {
			t.Fatalf("op %d: AppendOp overwrote dst", i)
		}
		got, err := ParseOp(b[6:])
		if err != nil {
			t.Fatalf("op %d (%s): %v", i, op.Kind, err)
		}
		if !reflect.DeepEqual(normalised(got), normalised(op)) {
			t.Fatalf("op %d: round trip\n got %+v\nwant %+v", i, got, op)
		}
		if again := AppendOp(nil, &got); !bytes.Equal(again, b[6:]) {
			t.Fatalf("op %d: re-encoding differs", i)
		}
		if k, err := OpKindOf(b[6:]); err != nil || k != op.Kind {
			t.Fatalf("op %d: OpKindOf = %v, %v", i, k, err)
		}
	}
}

func TestParseOpAliases(t *testing.T) {
	op := sampleOps()[0]
	b := AppendOp(nil, &op)
	got, err := ParseOp(b)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] = 'X' // last octet of the body
	if got.Body[len(got.Body)-1] != 'X' {
		t.Fatal("Body does not alias the input")
	}
	if cap(got.Header) != len(got.Header) {
		t.Fatal("Header's capacity reaches into the next field: an append would overwrite it")
	}
}

func TestParseOpMalformed(t *testing.T) {
	good := AppendOp(nil, &sampleOps()[0])
	ack := AppendOp(nil, &Op{Kind: OpAck, Vhost: "/", Queue: "q", IDs: []uint64{1, 2}})
	cases := []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "too short"},
		{"format", append([]byte{9}, good[1:]...), "format 9"},
		{"kind", []byte{OpFormat, 99, 0}, "unknown kind 99"},
		{"truncated publish", good[:len(good)-1], "body needs"},
		{"trailing", append(append([]byte{}, good...), 0), "1 octets after"},
		{"flags", func() []byte {
			b := append([]byte{}, good...)
			b[2+2+8] = 4 // vhost "/" is 2 octets, then the id
			return b
		}(), "flags 0x04"},
		{"truncated front key", func() []byte {
			b := append([]byte{}, good[:2+2+8]...)
			return append(b, 2, 0, 0, 0) // keyed, then 3 octets of the key
		}(), "front key"},
		{"huge id count", []byte{OpFormat, byte(OpAck), 0, 0, 0xff, 0xff, 0xff, 0xff}, "at most"},
		{"ids past end", append(ack[:len(ack)-16:len(ack)-16], make([]byte, 8)...), "2 ids need 16 octets, 8 left"},
		{"huge body length", []byte{OpFormat, byte(OpTopology), 0, 0xff, 0xff, 0xff, 0xff}, "method needs 4294967295 octets"},
		{"nodes past end", []byte{OpFormat, byte(OpStatus), 0, 1, 'q', 200, 1, 'b'}, "200 nodes need at least 200 octets"},
		{"node truncated", []byte{OpFormat, byte(OpStatus), 0, 1, 'q', 1, 5, 'b'}, "node needs 5 octets"},
		{"sync-end flags", []byte{OpFormat, byte(OpSyncEnd), 0, 1, 'q', 0, 0, 0, 0, 0, 0, 0, 1, 4}, "flags 0x04"},
	}
	for _, c := range cases {
		_, err := ParseOp(c.b)
		if !errors.Is(err, ErrMalformedOp) {
			t.Fatalf("%s: err = %v, want ErrMalformedOp", c.name, err)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: err = %q, want it to mention %q", c.name, err, c.want)
		}
	}
}

func TestParseOpAllocsBounded(t *testing.T) {
	// A hostile length must not make ParseOp allocate it.
	b := []byte{OpFormat, byte(OpDrop), 0, 0, 0, 1, 0, 0}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 100 {
		_, _ = ParseOp(b)
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / 100; per > 4096 {
		t.Fatalf("ParseOp of a 65536-id claim in 8 octets allocated %d bytes per call", per)
	}
}

func TestAppendOpRefuses(t *testing.T) {
	for _, op := range []Op{
		{Kind: 0},
		{Kind: OpPublish, Exchange: strings.Repeat("e", 256)},
		{Kind: OpAck, IDs: make([]uint64, MaxOpIDs+1)},
		{Kind: OpStatus, Nodes: make([]string, 256)},
		{Kind: OpSyncStart, Nodes: []string{strings.Repeat("n", 256)}},
		{Kind: OpPolicy, Name: strings.Repeat("p", 256)},
	} {
		if err := ValidateOp(&op); err == nil {
			t.Fatalf("ValidateOp(%v) = nil", op.Kind)
		}
		func() {
			defer func() {
				if recover() == nil {
					t.Fatalf("AppendOp(%v) did not panic", op.Kind)
				}
			}()
			AppendOp(nil, &op)
		}()
	}
}

func FuzzParseOp(f *testing.F) {
	for _, op := range sampleOps() {
		f.Add(AppendOp(nil, &op))
	}
	f.Add([]byte{})
	f.Add([]byte{OpFormat, byte(OpAck), 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		op, err := ParseOp(b)
		if err != nil {
			if !errors.Is(err, ErrMalformedOp) {
				t.Fatalf("error does not wrap ErrMalformedOp: %v", err)
			}
			return
		}
		if again := AppendOp(nil, &op); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", b, again)
		}
	})
}

func benchPublish() Op {
	header := amqp.AppendContentHeader(nil, 60, 1024, &amqp.Properties{
		ContentType: "application/octet-stream", DeliveryMode: amqp.Persistent,
		Headers: amqp.Table{{Key: "x-mirror-id", Value: uint64(1<<40 | 12345)}},
	})
	return Op{Kind: OpPublish, Vhost: "/", ID: 1<<40 | 12345, Exchange: "amq.direct",
		RoutingKey: "orders", Header: header, Body: bytes.Repeat([]byte{'x'}, 1024)}
}

func BenchmarkAppendOpPublish1K(b *testing.B) {
	op := benchPublish()
	buf := AppendOp(nil, &op)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendOp(buf[:0], &op)
	}
}

func BenchmarkParseOpPublish1K(b *testing.B) {
	op := benchPublish()
	buf := AppendOp(nil, &op)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseOp(buf); err != nil {
			b.Fatal(err)
		}
	}
}

func TestAppendOpNoAllocs(t *testing.T) {
	op := benchPublish()
	buf := AppendOp(nil, &op)
	if n := testing.AllocsPerRun(100, func() { buf = AppendOp(buf[:0], &op) }); n != 0 {
		t.Fatalf("AppendOp into a reused buffer allocated %v times per call", n)
	}
}

func TestQueueKeyText(t *testing.T) {
	if got := QueueKeyText(QueueKey("/", "ha.q")); got != `"ha.q" in vhost "/"` {
		t.Errorf("QueueKeyText: %s", got)
	}
	if got := QueueKeyText("bare"); got != `"bare"` {
		t.Errorf("QueueKeyText of a key without a vhost: %s", got)
	}
}
