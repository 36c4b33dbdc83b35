package amqp

import (
	"bytes"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestTableValueGolden pins each field type's tag and encoding.
func TestTableValueGolden(t *testing.T) {
	for _, c := range []struct {
		v    any
		want string // after the 1-octet key "k"
	}{
		{true, "74 01"},
		{false, "74 00"},
		{int8(-2), "62 fe"},
		{uint8(0xfe), "42 fe"},
		{int16(-2), "73 fffe"},
		{uint16(0xfffe), "75 fffe"},
		{int32(-2), "49 fffffffe"},
		{uint32(0xfffffffe), "69 fffffffe"},
		{int64(-2), "6c fffffffffffffffe"},
		{uint64(math.MaxUint64 - 1), "4c fffffffffffffffe"},
		{float32(1.5), "66 3fc00000"},
		{float64(1.5), "64 3ff8000000000000"},
		{Decimal{Scale: 3, Value: 0x01020304}, "44 03 01020304"},
		{"hé", "53 00000003 68c3a9"},
		{[]byte{0, 0xff}, "78 00000002 00ff"},
		{[]any{uint8(1), "a"}, "41 00000008 4201 5300000001 61"},
		{[]any{}, "41 00000000"},
		{Timestamp(0x0102030405060708), "54 0102030405060708"},
		{Table{{"a", nil}}, "46 00000003 0161 56"},
		{Table{}, "46 00000000"},
		{nil, "56"},
	} {
		want := hexBytes("016b" + strings.ReplaceAll(c.want, " ", ""))
		tab := Table{{"k", c.v}}
		enc := AppendTable(nil, tab)
		if !bytes.Equal(enc[4:], want) {
			t.Errorf("%T %v: %x, want %x", c.v, c.v, enc[4:], want)
			continue
		}
		got, err := DecodeTable(enc)
		if err != nil {
			t.Errorf("%T: %v", c.v, err)
			continue
		}
		if !reflect.DeepEqual(got, tab) {
			t.Errorf("%T: decoded %#v, want %#v", c.v, got, tab)
		}
	}
}

func TestTableConveniences(t *testing.T) {
	tm := time.Unix(1_700_000_000, 0)
	enc := AppendTable(nil, Table{{"n", 7}, {"t", tm}})
	got, err := DecodeTable(enc)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Table{{"n", int64(7)}, {"t", Timestamp(1_700_000_000)}}); !reflect.DeepEqual(got, want) {
		t.Errorf("got %#v", got)
	}
	if !got[1].Value.(Timestamp).Time().Equal(tm) || TimestampOf(tm) != 1_700_000_000 {
		t.Error("Timestamp conversions")
	}

	tab := Table{{"a", 1}, {"b", 2}, {"a", 3}}
	if v, ok := tab.Get("a"); !ok || v != 1 {
		t.Errorf("Get a = %v", v)
	}
	if _, ok := tab.Get("z"); ok {
		t.Error("Get z found")
	}
	tab = tab.Set("b", 20).Set("c", 30)
	if want := (Table{{"a", 1}, {"b", 20}, {"a", 3}, {"c", 30}}); !reflect.DeepEqual(tab, want) {
		t.Errorf("Set: %v", tab)
	}
	tab = tab.Delete("a")
	if want := (Table{{"b", 20}, {"c", 30}}); !reflect.DeepEqual(tab, want) {
		t.Errorf("Delete: %v", tab)
	}
	for _, c := range []struct {
		v  any
		n  int64
		ok bool
	}{
		{int8(-1), -1, true}, {uint8(1), 1, true}, {int16(-2), -2, true}, {uint16(2), 2, true},
		{int32(-3), -3, true}, {uint32(3), 3, true}, {int64(-4), -4, true}, {uint64(4), 4, true},
		{uint64(math.MaxUint64), 0, false}, {5, 5, true}, {"6", 0, false}, {1.0, 0, false},
	} {
		if n, ok := Int64(c.v); n != c.n || ok != c.ok {
			t.Errorf("Int64(%T %v) = %d, %v", c.v, c.v, n, ok)
		}
	}
}

func TestTableRoundTrip(t *testing.T) {
	tab := sampleTable()
	enc := AppendTable([]byte("xyz"), tab)[3:]
	got, err := DecodeTable(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, tab) {
		t.Fatalf("decoded %#v\nwant %#v", got, tab)
	}
	if again := AppendTable(nil, got); !bytes.Equal(again, enc) {
		t.Fatal("re-encoding differs")
	}
	// Special floats keep their bits.
	nan := math.Float32frombits(0x7fc00001)
	enc = AppendTable(nil, Table{{"f", nan}, {"d", math.Inf(-1)}, {"z", math.Copysign(0, -1)}})
	got, err = DecodeTable(enc)
	if err != nil {
		t.Fatal(err)
	}
	if math.Float32bits(got[0].Value.(float32)) != 0x7fc00001 || !bytes.Equal(AppendTable(nil, got), enc) {
		t.Error("special floats changed")
	}
	// An empty table decodes as nil.
	if got, err := DecodeTable([]byte{0, 0, 0, 0}); err != nil || got != nil {
		t.Errorf("empty table: %#v, %v", got, err)
	}
}

func TestTableErrors(t *testing.T) {
	deep := Table{{"v", nil}}
	for i := 0; i < maxNesting; i++ {
		deep = Table{{"n", deep}}
	}
	deepArray := []any{nil}
	for i := 0; i < maxNesting; i++ {
		deepArray = []any{deepArray}
	}
	okDeep := Table{{"v", nil}}
	for i := 0; i < maxNesting-1; i++ {
		okDeep = Table{{"n", okDeep}}
	}
	if _, err := DecodeTable(AppendTable(nil, okDeep)); err != nil {
		t.Errorf("%d levels: %v", maxNesting, err)
	}
	for _, c := range []struct {
		name   string
		in     []byte
		code   uint16
		reason string
	}{
		{"short size", hexBytes("000000"), FrameErrorCode, "needs 4 octets"},
		{"size overrun", hexBytes("00000005 016b56"), FrameErrorCode, "needs 5 octets"},
		{"trailing", hexBytes("00000000 00"), FrameErrorCode, "after the table"},
		{"key overrun", hexBytes("00000002 056b"), FrameErrorCode, "field name"},
		{"no type", hexBytes("00000002 016b"), FrameErrorCode, `field "k": cannot decode field value: no type octet`},
		{"unknown tag", hexBytes("00000003 016b 51"), SyntaxError, `field "k": unknown field value type 'Q' (0x51)`},
		{"unknown tag unprintable", hexBytes("00000003 016b 00"), SyntaxError, "unknown field value type 0x00"},
		{"bool 2", hexBytes("00000004 016b 7402"), SyntaxError, "boolean value octet is 2"},
		{"int32 short", hexBytes("00000005 016b 49 0000"), FrameErrorCode, "I value: needs 4 octets, 2 left"},
		{"longstr overrun", hexBytes("00000008 016b 53 00000009 61"), FrameErrorCode, "S value: needs 9 octets, 1 left"},
		{"array element", hexBytes("0000000b 016b 41 00000004 4201 5a00"), SyntaxError, `field "k": array element 1: unknown field value type 'Z'`},
		{"nested bad", hexBytes("0000000b 016b 46 00000004 016a 7403"), SyntaxError, `field "k": field "j": boolean`},
		{"too deep", AppendTable(nil, deep), SyntaxError, "nest deeper than 64"},
		{"too deep array", AppendTable(nil, Table{{"a", deepArray}}), SyntaxError, "nest deeper than 64"},
	} {
		got, err := DecodeTable(c.in)
		if err == nil {
			t.Errorf("%s: decoded %#v", c.name, got)
			continue
		}
		if code := frameCode(t, err); code != c.code || !strings.Contains(err.Error(), c.reason) {
			t.Errorf("%s: %v, want %d and %q", c.name, err, c.code, c.reason)
		}
	}
}

// TestTableTruncated cuts the sample table's encoding at every length.
func TestTableTruncated(t *testing.T) {
	enc := AppendTable(nil, sampleTable())
	for n := 0; n < len(enc); n++ {
		if _, err := DecodeTable(enc[:n]); err == nil {
			t.Fatalf("cut to %d: no error", n)
		}
		// Shrinking the declared size instead cuts inside a field.
		cut := bytes.Clone(enc[:n])
		if n >= 4 {
			cut[0], cut[1], cut[2], cut[3] = byte((n-4)>>24), byte((n-4)>>16), byte((n-4)>>8), byte(n-4)
			got, err := DecodeTable(cut)
			if err == nil && !bytes.Equal(AppendTable(nil, got), cut) {
				t.Fatalf("cut to %d decodes but re-encodes differently", n)
			}
		}
	}
}
