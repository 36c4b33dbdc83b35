package gm

import (
	"errors"
	"reflect"
	"testing"
)

func sampleMessage() Message {
	a, b := Member{"a", 1}, Member{"bb", 7}
	return Message{
		Type: MsgData, Epoch: 9, From: a, To: b,
		Starts:    []StreamSeq{{a, 3}},
		Delivered: []StreamSeq{{b, 1 << 40}},
		Facts:     []Fact{{Holder: b, Stream: a, Applied: 2}},
		Ops:       []Op{{Sender: a, Seq: 3, Epoch: 9, Data: []byte("hello")}, {Sender: a, Seq: 4, Epoch: 9, Data: []byte{}}},
	}
}

func TestMessageRoundTrip(t *testing.T) {
	m := sampleMessage()
	got, err := ParseMessage(AppendMessage(nil, &m))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, m)
	}
}

func TestParseMessageRejectsGarbage(t *testing.T) {
	m := sampleMessage()
	b := AppendMessage(nil, &m)
	for i := range len(b) {
		if _, err := ParseMessage(b[:i]); !errors.Is(err, ErrMalformed) {
			t.Fatalf("prefix %d: err %v, want ErrMalformed", i, err)
		}
	}
	if _, err := ParseMessage(append(b, 0)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("trailing byte: err %v", err)
	}
	if _, err := ParseMessage([]byte{1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("huge id length: err %v", err)
	}
}

func FuzzParseMessage(f *testing.F) {
	m := sampleMessage()
	f.Add(AppendMessage(nil, &m))
	f.Add([]byte{2, 1, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMessage(b)
		if err != nil {
			return
		}
		again, err := ParseMessage(AppendMessage(nil, &m))
		if err != nil {
			t.Fatalf("re-encoding a parsed message fails: %v", err)
		}
		if !reflect.DeepEqual(normal(again), normal(m)) {
			t.Fatalf("unstable round trip")
		}
	})
}

// normal maps empty data to nil so DeepEqual compares content.
func normal(m Message) Message {
	for i := range m.Ops {
		if len(m.Ops[i].Data) == 0 {
			m.Ops[i].Data = nil
		}
	}
	return m
}
