package amqp

import (
	"bytes"
	"testing"
)

// FuzzDecode feeds arbitrary octets to the frame reader, DecodeMethod,
// DecodeContentHeader, DecodeTable and the Peek functions. Nothing may
// panic, and whatever decodes must encode back to the same octets. It is
// seeded with every frame of the captured sessions.
//
//	go test ./proxy/amqp -run '^$' -fuzz FuzzDecode -fuzztime 5m
//
// Crashers found are kept under testdata/fuzz/FuzzDecode and run as cases by
// plain go test.
func FuzzDecode(f *testing.F) {
	for _, dir := range []string{"client", "server"} {
		for _, fr := range loadCapture(f, dir) {
			f.Add(fr.Payload)
			f.Add(fr.Raw)
		}
	}
	f.Add(AppendTable(nil, sampleTable()))
	all := allProperties()
	f.Add(AppendContentHeader(nil, ClassBasic, 7, &all))
	stream, _ := sampleStream()
	f.Add(stream[8:])
	f.Fuzz(func(t *testing.T, data []byte) {
		checkDecodes(t, data)
		r := NewReader(bytes.NewReader(data), 0)
		r.SetMaxFrameSize(0)
		for {
			fr, err := r.ReadFrame()
			if err != nil {
				break
			}
			if want := AppendFrame(nil, fr.Type, fr.Channel, fr.Payload); !bytes.Equal(fr.Raw, want) {
				t.Fatalf("frame %x re-frames as %x", fr.Raw, want)
			}
			checkDecodes(t, fr.Payload)
		}
	})
}

// checkDecodes runs every decoder on p and checks exactness and agreement.
func checkDecodes(t *testing.T, p []byte) {
	t.Helper()
	in := bytes.Clone(p)
	if m, err := DecodeMethod(p); err == nil {
		if err := ValidateMethod(m); err != nil {
			t.Fatalf("decoded %s does not validate: %v", m.Name(), err)
		}
		if got := AppendMethod(nil, m); !bytes.Equal(got, p) {
			t.Fatalf("method %s: %x re-encodes as %x", m.Name(), p, got)
		}
	} else {
		frameCode(t, err)
	}
	if key, ok := MethodKey(p); ok {
		for _, k := range peekKeys {
			if k == key {
				checkPeekAgrees(t, key, p)
			}
		}
		checkSetTag(t, key, p)
	}
	if class, size, props, err := DecodeContentHeader(p); err == nil {
		if err := ValidateProperties(&props); err != nil {
			t.Fatalf("decoded properties do not validate: %v", err)
		}
		if got := AppendContentHeader(nil, class, size, &props); !bytes.Equal(got, p) {
			t.Fatalf("content header %x re-encodes as %x", p, got)
		}
	} else {
		frameCode(t, err)
	}
	if tab, err := DecodeTable(p); err == nil {
		if got := AppendTable(nil, tab); !bytes.Equal(got, p) {
			t.Fatalf("table %x re-encodes as %x", p, got)
		}
	} else {
		frameCode(t, err)
	}
	if !bytes.Equal(in, p) {
		t.Fatal("a decoder changed its input")
	}
}

// checkSetTag checks SetDeliveryTag and SetAckTag on a copy of p: they work
// exactly when p decodes, and change nothing but the tag.
func checkSetTag(t *testing.T, key uint32, p []byte) {
	t.Helper()
	var set func([]byte, uint64) error
	switch key {
	case BasicDeliverID, BasicGetOkID:
		set = SetDeliveryTag
	case BasicAckID, BasicNackID, BasicRejectID:
		set = SetAckTag
	default:
		return
	}
	before, derr := DecodeMethod(p)
	q := bytes.Clone(p)
	serr := set(q, 0x0102030405060708)
	if (derr == nil) != (serr == nil) {
		t.Fatalf("%x: DecodeMethod %v, set tag %v", p, derr, serr)
	}
	if serr != nil {
		if !bytes.Equal(q, p) {
			t.Fatal("a failed set changed the payload")
		}
		return
	}
	after, err := DecodeMethod(q)
	if err != nil {
		t.Fatalf("after set: %v", err)
	}
	want := AppendMethod(nil, before)
	got := AppendMethod(nil, after)
	if len(got) != len(want) {
		t.Fatal("set changed the length")
	}
	diff := 0
	for i := range got {
		if got[i] != want[i] {
			diff++
		}
	}
	if diff > 8 {
		t.Fatalf("set changed %d octets", diff)
	}
}
