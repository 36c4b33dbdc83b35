package amqp

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// allMethods returns one empty value of every method the package knows,
// found by asking newMethod for every possible key of the known classes.
func allMethods() []Method {
	var ms []Method
	for class := 0; class < 1<<16; class++ {
		if ClassName(uint16(class)) == "" {
			continue
		}
		for method := 0; method < 1<<16; method++ {
			if m := newMethod(uint32(class)<<16 | uint32(method)); m != nil {
				ms = append(ms, m)
			}
		}
	}
	return ms
}

// The methods the task names, RabbitMQ's extensions included, plus the
// access class RabbitMQ still answers.
var wantMethods = strings.Fields(`
connection.start connection.start-ok connection.secure connection.secure-ok
connection.tune connection.tune-ok connection.open connection.open-ok
connection.close connection.close-ok connection.blocked connection.unblocked
connection.update-secret connection.update-secret-ok
channel.open channel.open-ok channel.flow channel.flow-ok channel.close channel.close-ok
access.request access.request-ok
exchange.declare exchange.declare-ok exchange.delete exchange.delete-ok
exchange.bind exchange.bind-ok exchange.unbind exchange.unbind-ok
queue.declare queue.declare-ok queue.bind queue.bind-ok queue.purge queue.purge-ok
queue.delete queue.delete-ok queue.unbind queue.unbind-ok
basic.qos basic.qos-ok basic.consume basic.consume-ok basic.cancel basic.cancel-ok
basic.publish basic.return basic.deliver basic.get basic.get-ok basic.get-empty
basic.ack basic.reject basic.recover-async basic.recover basic.recover-ok basic.nack
tx.select tx.select-ok tx.commit tx.commit-ok tx.rollback tx.rollback-ok
confirm.select confirm.select-ok`)

func TestEveryMethodIsThere(t *testing.T) {
	have := map[string]Method{}
	for _, m := range allMethods() {
		if _, dup := have[m.Name()]; dup {
			t.Errorf("%s twice", m.Name())
		}
		have[m.Name()] = m
		if got := MethodName(Key(m)); got != m.Name() {
			t.Errorf("MethodName(%s) = %q", m.Name(), got)
		}
		if got := ClassName(m.ClassID()) + "."; !strings.HasPrefix(m.Name(), got) {
			t.Errorf("%s: ClassName = %q", m.Name(), got)
		}
	}
	for _, name := range wantMethods {
		if have[name] == nil {
			t.Errorf("%s is missing", name)
		}
	}
	if len(have) != len(wantMethods) {
		t.Errorf("%d methods, want %d", len(have), len(wantMethods))
	}
	content := map[string]bool{"basic.publish": true, "basic.return": true, "basic.deliver": true, "basic.get-ok": true}
	for name, m := range have {
		if m.HasContent() != content[name] {
			t.Errorf("%s: HasContent = %v", name, m.HasContent())
		}
	}
	for _, name := range []string{"basic.publish", "basic.ack", "basic.nack", "basic.reject", "basic.deliver", "channel.flow-ok", "connection.blocked"} {
		if have[name].Synchronous() {
			t.Errorf("%s is synchronous", name)
		}
	}
	for _, name := range []string{"queue.declare", "basic.consume", "connection.open", "confirm.select", "tx.commit", "basic.get"} {
		if !have[name].Synchronous() {
			t.Errorf("%s is not synchronous", name)
		}
	}
}

// sampleTable has one value of every field type, nested.
func sampleTable() Table {
	return Table{
		{"bool", true},
		{"int8", int8(-8)},
		{"uint8", uint8(200)},
		{"int16", int16(-16000)},
		{"uint16", uint16(65000)},
		{"int32", int32(-32_000_000)},
		{"uint32", uint32(4_000_000_000)},
		{"int64", int64(-64_000_000_000)},
		{"uint64", uint64(18_000_000_000_000_000_000)},
		{"float32", float32(3.25)},
		{"float64", float64(-6.125)},
		{"decimal", Decimal{Scale: 2, Value: 12345}},
		{"string", "long string"},
		{"bytes", []byte{0, 1, 2, 0xff}},
		{"array", []any{int32(1), "two", Table{{"three", uint8(3)}}, []any{false}, nil}},
		{"timestamp", Timestamp(1_700_000_000)},
		{"table", Table{{"nested", "yes"}, {"deeper", Table{{"x", int16(1)}}}}},
		{"void", nil},
		{"bool", false}, // a repeated key is kept
	}
}

// populate sets every field of the method struct m to a non-zero value
// derived from seed.
func populate(m any, seed int) {
	v := reflect.ValueOf(m).Elem()
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		name := v.Type().Field(i).Name
		switch f.Kind() {
		case reflect.String:
			f.SetString(fmt.Sprintf("%s-%d", name, seed))
		case reflect.Uint8:
			f.SetUint(uint64(0x10 + i + seed))
		case reflect.Uint16:
			f.SetUint(uint64(0x1200 + i + seed))
		case reflect.Uint32:
			f.SetUint(uint64(0x12345600 + i + seed))
		case reflect.Uint64:
			f.SetUint(uint64(0x1234567890abcd00 + i + seed))
		case reflect.Bool:
			f.SetBool(true)
		case reflect.Slice: // Table
			f.Set(reflect.ValueOf(sampleTable()))
		default:
			panic("populate: field " + name + " of kind " + f.Kind().String())
		}
	}
}

func TestMethodRoundTrip(t *testing.T) {
	for _, m := range allMethods() {
		t.Run(m.Name(), func(t *testing.T) {
			populate(m, 1)
			payload := AppendMethod(nil, m)
			if err := ValidateMethod(m); err != nil {
				t.Fatal(err)
			}
			got, err := DecodeMethod(payload)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(got, m) {
				t.Fatalf("decoded %#v\nwant    %#v", got, m)
			}
			if again := AppendMethod(nil, got); !bytes.Equal(again, payload) {
				t.Fatalf("re-encoded %x\nwant      %x", again, payload)
			}
			// The zero value round-trips too.
			zero := reflect.New(reflect.TypeOf(m).Elem()).Interface().(Method)
			zp := AppendMethod(nil, zero)
			got, err = DecodeMethod(zp)
			if err != nil || !reflect.DeepEqual(got, zero) {
				t.Fatalf("zero value: %#v, %v", got, err)
			}
			// A whole frame is the payload framed.
			frame := AppendMethodFrame([]byte("prefix"), 7, m)
			if want := AppendFrame([]byte("prefix"), FrameMethod, 7, payload); !bytes.Equal(frame, want) {
				t.Fatalf("AppendMethodFrame = %x\nwant %x", frame, want)
			}
		})
	}
}

// TestMethodBits checks the packing of bit fields against the spec's rule
// independently of the generator: the k-th of consecutive bits is bit k of
// one shared octet, and a non-bit field starts a new octet.
func TestMethodBits(t *testing.T) {
	for _, m := range allMethods() {
		v := reflect.ValueOf(m).Elem()
		base := AppendMethod(nil, m)
		run, lastOctet := 0, -1
		prevBool := false
		for i := 0; i < v.NumField(); i++ {
			f := v.Field(i)
			if f.Kind() != reflect.Bool {
				prevBool = false
				continue
			}
			if !prevBool {
				run = 0
			}
			f.SetBool(true)
			enc := AppendMethod(nil, m)
			f.SetBool(false)
			if len(enc) != len(base) {
				t.Fatalf("%s: setting %s changed the length", m.Name(), v.Type().Field(i).Name)
			}
			diff := -1
			for j := range enc {
				if enc[j] != base[j] {
					if diff >= 0 {
						t.Fatalf("%s: %s changes more than one octet", m.Name(), v.Type().Field(i).Name)
					}
					diff = j
				}
			}
			if diff < 0 || enc[diff] != 1<<run {
				t.Fatalf("%s: %s is not bit %d of its octet: %x vs %x", m.Name(), v.Type().Field(i).Name, run, enc, base)
			}
			if prevBool && diff != lastOctet {
				t.Fatalf("%s: %s does not share its octet with the bit before it", m.Name(), v.Type().Field(i).Name)
			}
			lastOctet = diff
			prevBool = true
			run++
		}
	}
}

// TestMethodGolden pins encodings written out by hand from the spec.
func TestMethodGolden(t *testing.T) {
	for _, c := range []struct {
		m    Method
		want string
	}{
		{&BasicNack{DeliveryTag: 5, Multiple: true}, "003c0078 0000000000000005 01"},
		{&BasicNack{DeliveryTag: 5, Requeue: true}, "003c0078 0000000000000005 02"},
		{&BasicAck{DeliveryTag: 1 << 40, Multiple: true}, "003c0050 0000010000000000 01"},
		{&BasicReject{DeliveryTag: 2}, "003c005a 0000000000000002 00"},
		{&ConnectionOpen{VirtualHost: "/", Reserved2: true}, "000a0028 012f 00 01"},
		{&ConnectionTune{ChannelMax: 2047, FrameMax: 131072, Heartbeat: 60}, "000a001e 07ff 00020000 003c"},
		{&QueueDeclare{Queue: "q", Durable: true, AutoDelete: true}, "0032000a 0000 0171 0a 00000000"},
		{&ExchangeDeclare{Exchange: "x", Type: "direct", Durable: true, Internal: true}, "0028000a 0000 0178 06646972656374 0a 00000000"},
		{&BasicConsume{Queue: "q", ConsumerTag: "c", NoAck: true, Exclusive: true}, "003c0014 0000 0171 0163 06 00000000"},
		{&BasicQos{PrefetchCount: 10, Global: true}, "003c000a 00000000 000a 01"},
		{&BasicPublish{Exchange: "e", RoutingKey: "rk", Mandatory: true}, "003c0028 0000 0165 02726b 01"},
		{&BasicDeliver{ConsumerTag: "c", DeliveryTag: 9, Redelivered: true, Exchange: "", RoutingKey: "q"}, "003c003c 0163 0000000000000009 01 00 0171"},
		{&ExchangeUnbindOk{}, "00280033"},
		{&ConfirmSelect{NoWait: true}, "0055000a 01"},
		{&ConnectionClose{ReplyCode: 320, ReplyText: "bye", FailingClassID: 60, FailingMethodID: 40}, "000a0032 0140 03627965 003c 0028"},
		{&QueueBind{Queue: "q", Exchange: "e", RoutingKey: "k", Arguments: Table{{"x-match", "all"}}}, "00320014 0000 0171 0165 016b 00 00000010 07782d6d61746368 53 00000003 616c6c"},
	} {
		want, err := hex.DecodeString(strings.ReplaceAll(c.want, " ", ""))
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendMethod(nil, c.m); !bytes.Equal(got, want) {
			t.Errorf("%s: %x\nwant %x", c.m.Name(), got, want)
		}
		got, err := DecodeMethod(want)
		if err != nil || !reflect.DeepEqual(got, c.m) {
			t.Errorf("%s: decoded %#v, %v", c.m.Name(), got, err)
		}
	}
}

func frameCode(t *testing.T, err error) uint16 {
	t.Helper()
	var fe *FrameError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v (%T) is not a *FrameError", err, err)
	}
	return fe.Code
}

func TestDecodeMethodErrors(t *testing.T) {
	for _, c := range []struct {
		name    string
		payload []byte
		code    uint16
		reason  string
	}{
		{"empty", nil, FrameErrorCode, "too few"},
		{"three octets", []byte{0, 60, 0}, FrameErrorCode, "too few"},
		{"unknown class", []byte{0, 99, 0, 1}, CommandInvalid, "unknown class 99"},
		{"unknown method", []byte{0, 60, 0, 200}, CommandInvalid, "unknown method 60.200: class basic has no method 200"},
		{"unknown connection method", []byte{0, 10, 0, 99, 1, 2}, CommandInvalid, "unknown method 10.99"},
		{"qos truncated", []byte{0, 60, 0, 10, 0, 0}, FrameErrorCode, "basic.qos: cannot decode prefetch-size"},
		{"qos trailing", []byte{0, 60, 0, 10, 0, 0, 0, 0, 0, 10, 0, 'x'}, FrameErrorCode, "1 octets after"},
		{"qos reserved bits", []byte{0, 60, 0, 10, 0, 0, 0, 0, 0, 10, 0xfe}, SyntaxError, "reserved bits"},
		{"shortstr overrun", []byte{0, 60, 0, 30, 5, 'a', 'b'}, FrameErrorCode, "consumer-tag"},
		{"table overrun", hexBytes("0032000a 0000 0171 00 00000064 016b 56"), FrameErrorCode, "arguments"},
		{"table bad tag", hexBytes("0032000a 0000 0171 00 00000003 016b 5a"), SyntaxError, `arguments: field "k": unknown field value type 'Z'`},
		{"table bool 2", hexBytes("0032000a 0000 0171 00 00000004 016b 7402"), SyntaxError, "boolean"},
		{"tx.select trailing", []byte{0, 90, 0, 10, 0}, FrameErrorCode, "tx.select"},
	} {
		m, err := DecodeMethod(c.payload)
		if err == nil {
			t.Errorf("%s: decoded %#v", c.name, m)
			continue
		}
		if code := frameCode(t, err); code != c.code || !strings.Contains(err.Error(), c.reason) {
			t.Errorf("%s: %v, want code %d and %q", c.name, err, c.code, c.reason)
		}
	}
}

// TestDecodeMethodTruncated cuts every populated method at every length and
// adds a trailing octet: all must fail with 501 and none may panic.
func TestDecodeMethodTruncated(t *testing.T) {
	for _, m := range allMethods() {
		populate(m, 2)
		payload := AppendMethod(nil, m)
		for n := 4; n < len(payload); n++ {
			if _, err := DecodeMethod(payload[:n]); err == nil || frameCode(t, err) != FrameErrorCode {
				t.Fatalf("%s cut to %d of %d octets: %v, want 501", m.Name(), n, len(payload), err)
			}
		}
		if _, err := DecodeMethod(append(payload, 0)); err == nil || frameCode(t, err) != FrameErrorCode {
			t.Fatalf("%s with a trailing octet: %v, want 501", m.Name(), err)
		}
	}
}

// TestDecodeMethodReservedBits sets an undefined bit in every octet of bit
// fields: 502.
func TestDecodeMethodReservedBits(t *testing.T) {
	n := 0
	for _, m := range allMethods() {
		v := reflect.ValueOf(m).Elem()
		base := AppendMethod(nil, m)
		for i := 0; i < v.NumField(); i++ {
			if v.Field(i).Kind() != reflect.Bool {
				continue
			}
			v.Field(i).SetBool(true)
			enc := AppendMethod(nil, m)
			v.Field(i).SetBool(false)
			for j := range enc {
				if enc[j] != base[j] {
					bad := bytes.Clone(base)
					bad[j] = 0x80
					if _, err := DecodeMethod(bad); err == nil || frameCode(t, err) != SyntaxError {
						t.Fatalf("%s with octet %d = 0x80: %v, want 502", m.Name(), j, err)
					}
					n++
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("no bit fields found")
	}
}

func TestEncodeErrors(t *testing.T) {
	long := strings.Repeat("q", 256)
	for _, m := range []Method{
		&QueueDeclare{Queue: long},
		&QueueDeclare{Queue: "q", Arguments: Table{{"x", struct{}{}}}},
		&QueueDeclare{Queue: "q", Arguments: Table{{long, "v"}}},
		&QueueDeclare{Queue: "q", Arguments: Table{{"a", []any{Table{{"b", uint(1)}}}}}},
	} {
		err := ValidateMethod(m)
		var ee *EncodeError
		if !errors.As(err, &ee) {
			t.Errorf("ValidateMethod(%#v) = %v, want an *EncodeError", m, err)
		}
		func() {
			defer func() {
				if _, ok := recover().(*EncodeError); !ok {
					t.Errorf("AppendMethod(%#v) did not panic with *EncodeError", m)
				}
			}()
			AppendMethod(nil, m)
		}()
	}
	if err := ValidateMethod(&QueueDeclare{Queue: strings.Repeat("q", 255), Arguments: sampleTable()}); err != nil {
		t.Errorf("255-octet name: %v", err)
	}
}

func TestTruncateShortstr(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"short", "short"},
		{strings.Repeat("a", 255), strings.Repeat("a", 255)},
		{strings.Repeat("a", 300), strings.Repeat("a", 255)},
		{strings.Repeat("a", 254) + "é", strings.Repeat("a", 254)}, // é is 2 octets
		{strings.Repeat("a", 253) + "é", strings.Repeat("a", 253) + "é"},
	} {
		if got := TruncateShortstr(c.in); got != c.want {
			t.Errorf("TruncateShortstr(%d octets) = %d octets, want %d", len(c.in), len(got), len(c.want))
		}
	}
}

func TestMethodKey(t *testing.T) {
	p := AppendMethod(nil, &BasicAck{DeliveryTag: 1})
	if k, ok := MethodKey(p); !ok || k != BasicAckID {
		t.Errorf("MethodKey = %x, %v", k, ok)
	}
	if _, ok := MethodKey(p[:3]); ok {
		t.Error("MethodKey of 3 octets is ok")
	}
	if BasicPublishID != 60<<16|40 || Key(&BasicPublish{}) != BasicPublishID {
		t.Error("BasicPublishID")
	}
}

func hexBytes(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}
