package amqp

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"
)

// capturedFrame is one frame of a captured session.
type capturedFrame struct {
	dir string // "client" or "server"
	Frame
}

// loadCapture reads testdata/capture/<dir>.bin into frames (copies).
func loadCapture(t testing.TB, dir string) []capturedFrame {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "capture", dir+".bin"))
	if err != nil {
		t.Fatal(err)
	}
	r := NewReader(bytes.NewReader(b), 0)
	r.SetMaxFrameSize(131072)
	if dir == "client" {
		if _, err := r.ReadProtocolHeader(); err != nil {
			t.Fatal(err)
		}
	}
	var frames []capturedFrame
	for {
		f, err := r.ReadFrame()
		if errors.Is(err, io.EOF) {
			return frames
		}
		if err != nil {
			t.Fatalf("%s.bin frame %d: %v", dir, len(frames), err)
		}
		f.Raw = bytes.Clone(f.Raw)
		f.Payload = f.Raw[FrameHeaderSize : len(f.Raw)-1]
		frames = append(frames, capturedFrame{dir: dir, Frame: f})
	}
}

// TestCapturedSessions decodes every frame a real amqp091-go client and a
// real RabbitMQ 3.10.8 exchanged (see internal/capture) and checks that
// encoding what was decoded gives back the very same octets.
func TestCapturedSessions(t *testing.T) {
	seen := map[string]bool{}
	headers, bodies := 0, 0
	var fullProps *Properties
	var xDeath any
	for _, dir := range []string{"client", "server"} {
		frames := loadCapture(t, dir)
		if len(frames) < 50 {
			t.Fatalf("%s.bin has only %d frames", dir, len(frames))
		}
		pendingBody := map[uint16]uint64{} // channel -> body octets still expected
		for i, f := range frames {
			switch f.Type {
			case FrameMethod:
				m, err := DecodeMethod(f.Payload)
				if err != nil {
					t.Fatalf("%s frame %d: %v", dir, i, err)
				}
				seen[m.Name()] = true
				if got := AppendMethodFrame(nil, f.Channel, m); !bytes.Equal(got, f.Raw) {
					t.Fatalf("%s frame %d (%s) re-encodes as\n%x\nwant\n%x", dir, i, m.Name(), got, f.Raw)
				}
				if pendingBody[f.Channel] != 0 {
					t.Fatalf("%s frame %d: method before the body ended", dir, i)
				}
				// The Peek functions agree with the decoder on real frames.
				key, _ := MethodKey(f.Payload)
				if peeked, err := peekAs(key, f.Payload); err != nil {
					t.Fatalf("%s frame %d: peek: %v", dir, i, err)
				} else if peeked != nil && !reflect.DeepEqual(peeked, m) {
					t.Fatalf("%s frame %d: peeked %#v, decoded %#v", dir, i, peeked, m)
				}
			case FrameHeader:
				class, size, props, err := DecodeContentHeader(f.Payload)
				if err != nil {
					t.Fatalf("%s frame %d: %v", dir, i, err)
				}
				if got := AppendContentHeaderFrame(nil, f.Channel, class, size, &props); !bytes.Equal(got, f.Raw) {
					t.Fatalf("%s frame %d (content header) re-encodes as\n%x\nwant\n%x", dir, i, got, f.Raw)
				}
				pendingBody[f.Channel] = size
				headers++
				if props.MessageID == "msg-1" && dir == "client" {
					fullProps = &props
				}
				if v, ok := props.Headers.Get("x-death"); ok {
					xDeath = v
				}
			case FrameBody:
				if uint64(len(f.Payload)) > pendingBody[f.Channel] {
					t.Fatalf("%s frame %d: body frame beyond the body size", dir, i)
				}
				pendingBody[f.Channel] -= uint64(len(f.Payload))
				bodies++
			case FrameHeartbeat:
				if !bytes.Equal(f.Raw, HeartbeatFrame) {
					t.Fatalf("%s frame %d: heartbeat %x", dir, i, f.Raw)
				}
			}
		}
	}
	// The session covers what the capture program does; a thinner capture
	// fails here.
	want := []string{
		"connection.start", "connection.start-ok", "connection.tune", "connection.tune-ok",
		"connection.open", "connection.open-ok", "connection.close", "connection.close-ok",
		"connection.update-secret", "connection.update-secret-ok",
		"channel.open", "channel.open-ok", "channel.flow", "channel.flow-ok", "channel.close", "channel.close-ok",
		"exchange.declare", "exchange.declare-ok", "exchange.delete", "exchange.delete-ok",
		"exchange.bind", "exchange.bind-ok", "exchange.unbind", "exchange.unbind-ok",
		"queue.declare", "queue.declare-ok", "queue.bind", "queue.bind-ok", "queue.unbind", "queue.unbind-ok",
		"queue.purge", "queue.purge-ok", "queue.delete", "queue.delete-ok",
		"basic.qos", "basic.qos-ok", "basic.consume", "basic.consume-ok", "basic.cancel", "basic.cancel-ok",
		"basic.publish", "basic.return", "basic.deliver", "basic.get", "basic.get-ok", "basic.get-empty",
		"basic.ack", "basic.nack", "basic.reject", "basic.recover", "basic.recover-ok",
		"tx.select", "tx.select-ok", "tx.commit", "tx.commit-ok", "tx.rollback", "tx.rollback-ok",
		"confirm.select", "confirm.select-ok",
	}
	var missing []string
	for _, name := range want {
		if !seen[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("the capture lacks %v", missing)
	}
	if headers < 20 || bodies < 20 {
		t.Errorf("only %d content headers and %d body frames", headers, bodies)
	}
	if fullProps == nil || fullProps.Flags != 0xfff8 || len(fullProps.Headers) != 17 {
		t.Errorf("the publish with every property (but cluster-id) is missing or thin: %+v", fullProps)
	}
	if xDeath == nil {
		t.Error("no x-death header from the broker in the capture")
	}
}
