package proxy_test

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mirrorproxy/mirrorproxy/proxy"
	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// badInputs are protocol violations a client can commit after opening its
// connection and channel 1. Each must get the same reply code through the
// proxy as from the broker directly (DESIGN invariant 6). Where RabbitMQ
// 3.10 sends no close at all (it resets the connection on an unknown class,
// and waits forever for the rest of an oversized frame or ignores a body
// longer than its header said) the proxy still closes with the code the
// spec gives, and a reason.
var badInputs = []struct {
	name     string
	send     func(c *rawClient) []byte
	want     uint16 // the code we expect both to send
	sameText bool   // and the broker's very words
}{
	{"unknown frame type", func(c *rawClient) []byte {
		return []byte{9, 0, 1, 0, 0, 0, 1, 0, amqp.FrameEnd}
	}, amqp.FrameErrorCode, true},
	{"wrong frame-end octet", func(c *rawClient) []byte {
		b := amqp.AppendMethodFrame(nil, 1, &amqp.BasicQos{PrefetchCount: 1})
		b[len(b)-1] = 0x00
		return b
	}, amqp.FrameErrorCode, true},
	{"frame larger than frame_max", func(c *rawClient) []byte {
		size := c.tune.FrameMax // payload alone already exceeds frame_max with the overhead
		b := []byte{amqp.FrameBody, 0, 1, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(b[3:], size)
		return b // the proxy must refuse before the payload arrives
	}, amqp.FrameErrorCode, false},
	{"unknown class and method", func(c *rawClient) []byte {
		return amqp.AppendFrame(nil, amqp.FrameMethod, 1, []byte{0, 99, 0, 1})
	}, 0, false},
	{"method on a channel never opened", func(c *rawClient) []byte {
		return amqp.AppendMethodFrame(nil, 7, &amqp.BasicQos{PrefetchCount: 1})
	}, amqp.ChannelError, true},
	{"content header on a channel never opened", func(c *rawClient) []byte {
		return amqp.AppendContentHeaderFrame(nil, 7, 60, 4, &amqp.Properties{})
	}, amqp.UnexpectedFrame, true},
	{"undecodable method on a channel never opened", func(c *rawClient) []byte {
		return amqp.AppendFrame(nil, amqp.FrameMethod, 7, []byte{0, 50, 0, 10, 0, 0, 200, 'a', 'b', 'c'})
	}, amqp.FrameErrorCode, true},
	{"channel.close-ok on an open channel", func(c *rawClient) []byte {
		return amqp.AppendMethodFrame(nil, 1, &amqp.ChannelCloseOk{})
	}, amqp.CommandInvalid, true},
	{"heartbeat on channel 1", func(c *rawClient) []byte {
		return []byte{amqp.FrameHeartbeat, 0, 1, 0, 0, 0, 0, amqp.FrameEnd}
	}, amqp.UnexpectedFrame, true},
	{"second channel.open", func(c *rawClient) []byte {
		return amqp.AppendMethodFrame(nil, 1, &amqp.ChannelOpen{})
	}, amqp.ChannelError, true},
	{"body longer than the header said", func(c *rawClient) []byte {
		b := amqp.AppendMethodFrame(nil, 1, &amqp.BasicPublish{RoutingKey: "nowhere"})
		b = amqp.AppendContentHeaderFrame(b, 1, 60, 4, &amqp.Properties{})
		return amqp.AppendFrame(b, amqp.FrameBody, 1, []byte("0123456789"))
	}, 0, false},
	{"content header without a method", func(c *rawClient) []byte {
		return amqp.AppendContentHeaderFrame(nil, 1, 60, 4, &amqp.Properties{})
	}, amqp.UnexpectedFrame, false},
	{"method where a content header belongs", func(c *rawClient) []byte {
		b := amqp.AppendMethodFrame(nil, 1, &amqp.BasicPublish{RoutingKey: "nowhere"})
		return amqp.AppendMethodFrame(b, 1, &amqp.BasicQos{PrefetchCount: 1})
	}, amqp.UnexpectedFrame, false},
	{"truncated method arguments", func(c *rawClient) []byte {
		// queue.declare whose queue name says 200 octets but has 3.
		return amqp.AppendFrame(nil, amqp.FrameMethod, 1, []byte{0, 50, 0, 10, 0, 0, 200, 'a', 'b', 'c'})
	}, 0, false},
}

// closeCode sends the bad input after a good handshake and returns the
// connection.close reply code received (0: the connection just ended).
// The broker hangs on some inputs (it waits for the rest of an oversized
// frame); wait for it at most within.
func closeCode(t *testing.T, addr string, within time.Duration, send func(*rawClient) []byte) (uint16, string) {
	c := dialRaw(t, addr)
	c.open(0, nil)
	c.conn.SetDeadline(time.Now().Add(within))
	c.send(send(c))
	cl := c.closed()
	if cl == nil {
		return 0, "(no connection.close)"
	}
	return cl.ReplyCode, cl.ReplyText
}

func TestBadInputGetsTheBrokersClose(t *testing.T) {
	b := needBroker(t)
	p := startProxy(t, proxy.Options{})
	bystander := p.dial(t)
	for _, tc := range badInputs {
		t.Run(tc.name, func(t *testing.T) {
			direct, directText := closeCode(t, b.AMQPAddr, 3*time.Second, tc.send)
			got, text := closeCode(t, p.Addr, 20*time.Second, tc.send)
			t.Logf("direct: %d %q; proxy: %d %q", direct, directText, got, text)
			if got == 0 {
				t.Fatalf("the proxy closed without connection.close; the broker sent %d %q", direct, directText)
			}
			if tc.want != 0 && got != tc.want {
				t.Errorf("proxy sent %d, want %d", got, tc.want)
			}
			if direct != 0 && got != direct {
				t.Errorf("proxy sent %d %q, the broker sends %d %q", got, text, direct, directText)
			}
			if text == "" {
				t.Error("the close has no reason text")
			}
			if tc.sameText && text != directText {
				t.Errorf("proxy said %q, the broker says %q", text, directText)
			}
			// The other session does not notice.
			healthy(t, bystander)
		})
	}
	// One log line per fault, with the client's address.
	if line := p.Logs.lineWith(`"client":"127.0.0.1:`, `"code":501`); line == "" {
		t.Errorf("no log line with the client address for a frame error:\n%s", p.Logs.String())
	}
}

func TestBadProtocolHeaderIsAnsweredWithOurs(t *testing.T) {
	p := startProxy(t, proxy.Options{})
	c := dialRaw(t, p.Addr)
	c.send([]byte("GET / HTTP/1.1\r\n\r\n"))
	got, err := io.ReadAll(c.conn)
	if err != nil && !isReset(err) {
		t.Fatal(err)
	}
	if string(got) != string(amqp.ProtocolHeader[:]) {
		t.Fatalf("got %q, want the AMQP 0-9-1 protocol header", got)
	}
	eventually(t, 5*time.Second, "a log line about the bad header", func() bool {
		return p.Logs.lineWith("bad protocol header", `"client":"127.0.0.1:`) != ""
	})
}

func TestStalledHandshakeTimesOut(t *testing.T) {
	p := startProxy(t, proxy.Options{HandshakeTimeout: 300 * time.Millisecond})
	bystander := p.dial(t)
	for _, stage := range []string{"nothing sent", "protocol header only", "start-ok never sent"} {
		t.Run(stage, func(t *testing.T) {
			c := dialRaw(t, p.Addr)
			switch stage {
			case "protocol header only":
				c.send(amqp.ProtocolHeader[:4])
			case "start-ok never sent":
				c.send(amqp.ProtocolHeader[:])
				c.expect("connection.start")
			}
			c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadAll(c.conn); err != nil && !isReset(err) {
				t.Fatalf("the proxy did not close a stalled handshake: %v", err)
			}
			healthy(t, bystander)
		})
	}
}

func TestUpstreamRefusing(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	p := startProxy(t, proxy.Options{Upstream: dead, DialTimeout: time.Second})

	// Frame by frame: connection.start, then after start-ok a 320 that
	// names the broker and the cause.
	c := dialRaw(t, p.Addr)
	c.send(amqp.ProtocolHeader[:])
	c.expect("connection.start")
	c.sendMethod(0, &amqp.ConnectionStartOk{Mechanism: "PLAIN", Response: "\x00guest\x00guest", Locale: "en_US"})
	cl := c.closed()
	if cl == nil || cl.ReplyCode != amqp.ConnectionForced ||
		!strings.Contains(cl.ReplyText, "CONNECTION_FORCED") || !strings.Contains(cl.ReplyText, dead) ||
		!strings.Contains(cl.ReplyText, "connection refused") {
		t.Fatalf("got %v, want connection.close 320 naming %s and the cause", describe(methodOrNil(cl)), dead)
	}
	if _, err := io.ReadAll(c.conn); err != nil && !isReset(err) {
		t.Fatalf("after close-ok: %v", err)
	}
	eventually(t, 5*time.Second, "a log line naming the broker", func() bool {
		return p.Logs.lineWith("cannot reach the broker", dead) != ""
	})

	// A real client reports that reason, not a bare EOF.
	_, err = amqp091.DialConfig(p.URL(), amqp091.Config{Dial: amqp091.DefaultDial(5 * time.Second)})
	var ae *amqp091.Error
	if !errors.As(err, &ae) || ae.Code != amqp091.ConnectionForced || !strings.Contains(ae.Reason, dead) {
		t.Fatalf("amqp091-go: got %v, want a 320 naming %s", err, dead)
	}
	t.Logf("amqp091-go says: %v", err)

	// A bare TCP connect that leaves (a readiness probe) is logged at debug.
	probe, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	probe.Close()
	eventually(t, 5*time.Second, "the probe's log line", func() bool {
		return p.Logs.lineWith(`"level":"debug"`, "client left before sending a protocol header") != ""
	})
}

func TestUpstreamDyingMidSession(t *testing.T) {
	needBroker(t)
	g := startOwnBroker(t)
	p := startProxy(t, proxy.Options{Upstream: g.AMQPAddr})
	c := dialRaw(t, p.Addr)
	c.open(0, nil)
	if err := g.Kill(); err != nil {
		t.Fatal(err)
	}
	cl := c.closed()
	if cl == nil || cl.ReplyCode != amqp.ConnectionForced || !strings.Contains(cl.ReplyText, "CONNECTION_FORCED") {
		t.Fatalf("got %v, want connection.close 320 CONNECTION_FORCED", describe(methodOrNil(cl)))
	}
	eventually(t, 5*time.Second, "a log line", func() bool {
		return p.Logs.lineWith("broker connection failed", `"client":"127.0.0.1:`) != ""
	})
}

func methodOrNil(c *amqp.ConnectionClose) amqp.Method {
	if c == nil {
		return nil
	}
	return c
}

// tuneOkAnswer sends tune-ok with channelMax and frameMax after the offer
// and says how it is answered: "open-ok" when the handshake goes on, the
// close when there is one, "dropped" when the connection just ends.
func tuneOkAnswer(t *testing.T, addr string, channelMax uint16, frameMax uint32) string {
	c := dialRaw(t, addr)
	c.send(amqp.ProtocolHeader[:])
	c.expect("connection.start")
	c.sendMethod(0, &amqp.ConnectionStartOk{ClientProperties: amqp.Table{{Key: "product", Value: "rawclient"}}, Mechanism: "PLAIN", Response: "\x00guest\x00guest", Locale: "en_US"})
	c.expect("connection.tune")
	c.sendMethod(0, &amqp.ConnectionTuneOk{ChannelMax: channelMax, FrameMax: frameMax})
	c.sendMethod(0, &amqp.ConnectionOpen{VirtualHost: "/"})
	_, m, err := c.next()
	switch {
	case err != nil:
		return "dropped"
	case m.Name() == "connection.open-ok":
		return "open-ok"
	}
	return describe(m)
}

// The client's tune-ok is checked as RabbitMQ checks it (the proxy offers
// the broker's channel_max and, by default, its frame_max): the broker
// logs the fault and drops the connection without a close; so does the
// proxy, with the broker's words in its log.
func TestTuneOkIsCheckedAsByTheBroker(t *testing.T) {
	b := needBroker(t)
	p := startProxy(t, proxy.Options{})
	t.Cleanup(func() {
		for _, want := range []string{
			"negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)",
			"negotiated frame_max = 4095 is lower than the minimum allowed value (4096)",
			"negotiated frame_max = 200000 is higher than the maximum allowed value (131072)",
		} {
			if p.Logs.lineWith(want) == "" {
				t.Errorf("no log line saying %q", want)
			}
		}
	})
	for _, tc := range []struct {
		name       string
		channelMax uint16
		frameMax   uint32
		want       string
	}{
		{"as offered", 2047, 131072, "open-ok"},
		{"channel_max 0 (no limit)", 0, 131072, "dropped"},
		{"channel_max above the offer", 3000, 131072, "dropped"},
		{"channel_max lower", 10, 131072, "open-ok"},
		{"frame_max 0 (no limit)", 2047, 0, "dropped"},
		{"frame_max above the offer", 2047, 200000, "dropped"},
		{"frame_max below 4096", 2047, 4095, "dropped"},
		{"frame_max 4096", 2047, 4096, "open-ok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // the broker waits 3 s before it drops a connection
			direct := tuneOkAnswer(t, b.AMQPAddr, tc.channelMax, tc.frameMax)
			got := tuneOkAnswer(t, p.Addr, tc.channelMax, tc.frameMax)
			if direct != tc.want {
				t.Fatalf("the broker answered %s, the test expects %s", direct, tc.want)
			}
			if got != direct {
				t.Fatalf("the proxy answered %s, the broker %s", got, direct)
			}
		})
	}
}

// AMQP 0-9's header gets 0-9-1, as from RabbitMQ. The 0-8 headers, which
// RabbitMQ answers with 0-8, are refused (docs/PROXY-STRICTNESS.md).
func TestProtocolHeaders(t *testing.T) {
	b := needBroker(t)
	p := startProxy(t, proxy.Options{})
	start := func(addr string, h []byte) *amqp.ConnectionStart {
		c := dialRaw(t, addr)
		c.send(h)
		_, m, err := c.next()
		if err != nil {
			return nil
		}
		st, _ := m.(*amqp.ConnectionStart)
		return st
	}
	v09 := []byte("AMQP\x01\x01\x00\x09")
	d, s := start(b.AMQPAddr, v09), start(p.Addr, v09)
	if d == nil || s == nil || d.VersionMajor != s.VersionMajor || d.VersionMinor != s.VersionMinor {
		t.Fatalf("AMQP 0-9 header: broker %v, proxy %v", d, s)
	}
	for _, h := range []string{"AMQP\x01\x01\x08\x00", "AMQP\x01\x01\x09\x01"} {
		if d := start(b.AMQPAddr, []byte(h)); d == nil || d.VersionMajor != 8 {
			t.Errorf("header %q: the broker answered %v, the test expects 0-8's start", h, d)
		}
		c := dialRaw(t, p.Addr)
		c.send([]byte(h))
		got, err := io.ReadAll(c.conn)
		if err != nil && !isReset(err) {
			t.Fatal(err)
		}
		if string(got) != string(amqp.ProtocolHeader[:]) {
			t.Errorf("header %q: the proxy answered %q, want its 0-9-1 header", h, got)
		}
	}
}

// A fault of the client's before its connection is open is answered by
// RabbitMQ with no close at all: it logs it and drops the connection after
// 3 s. So does the proxy.
func TestHandshakeFaultsAreAnsweredAsByTheBroker(t *testing.T) {
	b := needBroker(t)
	p := startProxy(t, proxy.Options{})
	startOk := &amqp.ConnectionStartOk{ClientProperties: amqp.Table{{Key: "product", Value: "rawclient"}}, Mechanism: "PLAIN", Response: "\x00guest\x00guest", Locale: "en_US"}
	answer := func(addr string, send func(c *rawClient)) string {
		c := dialRaw(t, addr)
		c.send(amqp.ProtocolHeader[:])
		c.expect("connection.start")
		send(c)
		_, m, err := c.next()
		if err != nil {
			return "dropped"
		}
		return describe(m)
	}
	for _, tc := range []struct {
		name string
		send func(c *rawClient)
		want string
	}{
		{"connection.open instead of start-ok", func(c *rawClient) { c.sendMethod(0, &amqp.ConnectionOpen{VirtualHost: "/"}) }, "dropped"},
		{"a method on channel 1", func(c *rawClient) { c.sendMethod(1, &amqp.ChannelOpen{}) }, "dropped"},
		{"a content frame on channel 0", func(c *rawClient) { c.send(amqp.AppendContentHeaderFrame(nil, 0, 60, 4, &amqp.Properties{})) }, "dropped"},
		{"start-ok that does not decode", func(c *rawClient) {
			c.send(amqp.AppendFrame(nil, amqp.FrameMethod, 0, []byte{0, 10, 0, 11, 0, 0, 0, 200}))
		}, "dropped"},
		{"connection.open instead of tune-ok", func(c *rawClient) {
			c.sendMethod(0, startOk)
			c.expect("connection.tune")
			c.sendMethod(0, &amqp.ConnectionOpen{VirtualHost: "/"})
		}, "dropped"},
		{"a heartbeat on channel 1", func(c *rawClient) { c.send([]byte{amqp.FrameHeartbeat, 0, 1, 0, 0, 0, 0, amqp.FrameEnd}) }, "dropped"},
		{"a heartbeat, then start-ok", func(c *rawClient) {
			c.send(amqp.HeartbeatFrame)
			c.sendMethod(0, startOk)
		}, "connection.tune"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // the broker waits 3 s before it drops a connection
			direct, got := answer(b.AMQPAddr, tc.send), answer(p.Addr, tc.send)
			if direct != tc.want {
				t.Fatalf("the broker answered %s, the test expects %s", direct, tc.want)
			}
			if got != direct {
				t.Fatalf("the proxy answered %s, the broker %s", got, direct)
			}
		})
	}
}
