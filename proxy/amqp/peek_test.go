package amqp

import (
	"bytes"
	"reflect"
	"testing"
)

func peekSamples() []Method {
	return []Method{
		&BasicPublish{Reserved1: 3, Exchange: "ex", RoutingKey: "rk"},
		&BasicPublish{Exchange: "", RoutingKey: "q", Mandatory: true, Immediate: true},
		&BasicDeliver{ConsumerTag: "ctag", DeliveryTag: 1 << 50, Redelivered: true, Exchange: "ex", RoutingKey: "rk"},
		&BasicDeliver{DeliveryTag: 1},
		&BasicGetOk{DeliveryTag: 77, Redelivered: true, Exchange: "e", RoutingKey: "r", MessageCount: 1 << 30},
		&BasicGetOk{},
		&BasicAck{DeliveryTag: 9, Multiple: true},
		&BasicAck{DeliveryTag: 10},
		&BasicNack{DeliveryTag: 11, Multiple: true},
		&BasicNack{DeliveryTag: 12, Requeue: true},
		&BasicReject{DeliveryTag: 13, Requeue: true},
		&BasicReject{DeliveryTag: 14},
	}
}

// peekAs runs the Peek function for key on p and returns what it read as
// the method struct it stands for.
func peekAs(key uint32, p []byte) (Method, error) {
	switch key {
	case BasicPublishID:
		ex, rk, mandatory, err := PeekBasicPublish(p)
		if err != nil {
			return nil, err
		}
		// Peek skips reserved-1 and immediate; take them from the payload.
		return &BasicPublish{Reserved1: uint16(p[4])<<8 | uint16(p[5]), Exchange: string(ex), RoutingKey: string(rk), Mandatory: mandatory, Immediate: p[len(p)-1]&2 != 0}, nil
	case BasicDeliverID:
		ctag, tag, redelivered, ex, rk, err := PeekBasicDeliver(p)
		if err != nil {
			return nil, err
		}
		return &BasicDeliver{ConsumerTag: string(ctag), DeliveryTag: tag, Redelivered: redelivered, Exchange: string(ex), RoutingKey: string(rk)}, nil
	case BasicGetOkID:
		tag, redelivered, ex, rk, count, err := PeekBasicGetOk(p)
		if err != nil {
			return nil, err
		}
		return &BasicGetOk{DeliveryTag: tag, Redelivered: redelivered, Exchange: string(ex), RoutingKey: string(rk), MessageCount: count}, nil
	case BasicAckID:
		tag, multiple, err := PeekBasicAck(p)
		if err != nil {
			return nil, err
		}
		return &BasicAck{DeliveryTag: tag, Multiple: multiple}, nil
	case BasicNackID:
		tag, multiple, requeue, err := PeekBasicNack(p)
		if err != nil {
			return nil, err
		}
		return &BasicNack{DeliveryTag: tag, Multiple: multiple, Requeue: requeue}, nil
	case BasicRejectID:
		tag, requeue, err := PeekBasicReject(p)
		if err != nil {
			return nil, err
		}
		return &BasicReject{DeliveryTag: tag, Requeue: requeue}, nil
	}
	return nil, nil
}

var peekKeys = []uint32{BasicPublishID, BasicDeliverID, BasicGetOkID, BasicAckID, BasicNackID, BasicRejectID}

func TestPeek(t *testing.T) {
	for _, m := range peekSamples() {
		p := AppendMethod(nil, m)
		got, err := peekAs(Key(m), p)
		if err != nil {
			t.Fatalf("%s: %v", m.Name(), err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("%s: peeked %#v, want %#v", m.Name(), got, m)
		}
	}
}

// checkPeekAgrees asserts that a Peek function accepts p exactly when
// DecodeMethod does, with the same error code and the same values.
func checkPeekAgrees(t *testing.T, key uint32, p []byte) {
	t.Helper()
	decoded, derr := DecodeMethod(p)
	peeked, perr := peekAs(key, p)
	if (derr == nil) != (perr == nil) {
		t.Fatalf("%x: DecodeMethod error %v, peek error %v", p, derr, perr)
	}
	if derr != nil {
		k, ok := MethodKey(p)
		if ok && k == key && frameCode(t, derr) != frameCode(t, perr) {
			t.Fatalf("%x: DecodeMethod %v, peek %v", p, derr, perr)
		}
		return
	}
	if !reflect.DeepEqual(decoded, peeked) {
		t.Fatalf("%x: decoded %#v, peeked %#v", p, decoded, peeked)
	}
}

func TestPeekAgreesWithDecode(t *testing.T) {
	for _, m := range peekSamples() {
		key := Key(m)
		p := AppendMethod(nil, m)
		for n := 0; n <= len(p)+1; n++ {
			q := bytes.Clone(p)
			if n <= len(p) {
				q = q[:n]
			} else {
				q = append(q, 0)
			}
			checkPeekAgrees(t, key, q)
		}
		for i := 4; i < len(p); i++ {
			for _, v := range []byte{0, 1, 2, 3, 0x80, 0xff} {
				q := bytes.Clone(p)
				q[i] = v
				checkPeekAgrees(t, key, q)
			}
		}
	}
	// Another method's payload: 503 naming both.
	_, _, _, err := PeekBasicPublish(AppendMethod(nil, &BasicAck{}))
	if err == nil || frameCode(t, err) != CommandInvalid || err.Error() != "amqp: 503 expected basic.publish, got basic.ack" {
		t.Errorf("wrong method: %v", err)
	}
	if _, _, err := PeekBasicAck([]byte{0, 99, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}); err == nil || err.Error() != "amqp: 503 expected basic.ack, got 99.1" {
		t.Errorf("unknown method: %v", err)
	}
}

func TestPeekDoesNotAllocate(t *testing.T) {
	pub := AppendMethod(nil, peekSamples()[0])
	del := AppendMethod(nil, peekSamples()[2])
	getOk := AppendMethod(nil, peekSamples()[4])
	ack := AppendMethod(nil, peekSamples()[6])
	nack := AppendMethod(nil, peekSamples()[8])
	rej := AppendMethod(nil, peekSamples()[10])
	stream, _ := publishStream()
	r := NewReader(&loopReader{data: stream}, 64<<10)
	for name, f := range map[string]func(){
		"PeekBasicPublish":      func() { _, _, _, _ = PeekBasicPublish(pub) },
		"PeekBasicDeliver":      func() { _, _, _, _, _, _ = PeekBasicDeliver(del) },
		"PeekBasicGetOk":        func() { _, _, _, _, _, _ = PeekBasicGetOk(getOk) },
		"PeekBasicAck":          func() { _, _, _ = PeekBasicAck(ack) },
		"PeekBasicNack":         func() { _, _, _, _ = PeekBasicNack(nack) },
		"PeekBasicReject":       func() { _, _, _ = PeekBasicReject(rej) },
		"SetDeliveryTag":        func() { _ = SetDeliveryTag(del, 5) },
		"SetDeliveryTag/get-ok": func() { _ = SetDeliveryTag(getOk, 5) },
		"SetAckTag":             func() { _ = SetAckTag(nack, 5) },
		"MethodKey":             func() { _, _ = MethodKey(pub) },
		"ReadFrame": func() {
			if _, err := r.ReadFrame(); err != nil {
				t.Fatal(err)
			}
		},
	} {
		if n := testing.AllocsPerRun(200, f); n != 0 {
			t.Errorf("%s allocates %v times per call", name, n)
		}
	}
}

func TestSetTags(t *testing.T) {
	for _, m := range peekSamples() {
		p := AppendMethod(nil, m)
		var err error
		switch Key(m) {
		case BasicDeliverID, BasicGetOkID:
			err = SetDeliveryTag(p, 0xdeadbeef01)
			if aerr := SetAckTag(bytes.Clone(p), 1); aerr == nil || frameCode(t, aerr) != CommandInvalid {
				t.Errorf("SetAckTag on %s: %v", m.Name(), aerr)
			}
		case BasicAckID, BasicNackID, BasicRejectID:
			err = SetAckTag(p, 0xdeadbeef01)
			if derr := SetDeliveryTag(bytes.Clone(p), 1); derr == nil || frameCode(t, derr) != CommandInvalid {
				t.Errorf("SetDeliveryTag on %s: %v", m.Name(), derr)
			}
		default:
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", m.Name(), err)
		}
		got, err := DecodeMethod(p)
		if err != nil {
			t.Fatal(err)
		}
		want := reflect.ValueOf(m).Elem()
		v := reflect.New(want.Type())
		v.Elem().Set(want)
		v.Elem().FieldByName("DeliveryTag").SetUint(0xdeadbeef01)
		if !reflect.DeepEqual(got, v.Interface()) {
			t.Errorf("%s after set: %#v", m.Name(), got)
		}
	}
	// Malformed payloads are refused and left alone.
	p := AppendMethod(nil, &BasicDeliver{ConsumerTag: "c", DeliveryTag: 1})
	cut := bytes.Clone(p[:len(p)-1])
	before := bytes.Clone(cut)
	if err := SetDeliveryTag(cut, 2); err == nil || frameCode(t, err) != FrameErrorCode || !bytes.Equal(cut, before) {
		t.Errorf("cut deliver: %v", err)
	}
	if err := SetDeliveryTag([]byte{0, 60}, 2); err == nil {
		t.Error("2-octet payload accepted")
	}
	if err := SetAckTag([]byte{0, 60, 0, 80, 0}, 2); err == nil || frameCode(t, err) != FrameErrorCode {
		t.Errorf("cut ack: %v", err)
	}
}
