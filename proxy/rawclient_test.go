package proxy_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// rawClient speaks AMQP frame by frame, so tests can send what no client
// library would.
type rawClient struct {
	t    testing.TB
	conn net.Conn
	r    *amqp.Reader
	tune amqp.ConnectionTune
}

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := amqp.NewReader(c, 1<<20)
	r.SetMaxFrameSize(0)
	return &rawClient{t: t, conn: c, r: r}
}

func (c *rawClient) send(b []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawClient) sendMethod(ch uint16, m amqp.Method) {
	c.t.Helper()
	c.send(amqp.AppendMethodFrame(nil, ch, m))
}

// next returns the next non-heartbeat method.
func (c *rawClient) next() (amqp.Frame, amqp.Method, error) {
	for {
		f, err := c.r.ReadFrame()
		if err != nil {
			return f, nil, err
		}
		if f.Type != amqp.FrameMethod {
			if f.Type == amqp.FrameHeartbeat {
				continue
			}
			return f, nil, nil
		}
		m, err := amqp.DecodeMethod(f.Payload)
		return f, m, err
	}
}

func (c *rawClient) expect(want string) amqp.Method {
	c.t.Helper()
	_, m, err := c.next()
	if err != nil {
		c.t.Fatalf("waiting for %s: %v", want, err)
	}
	if m == nil || m.Name() != want {
		c.t.Fatalf("got %v, want %s", describe(m), want)
	}
	return m
}

func describe(m amqp.Method) string {
	if m == nil {
		return "a content frame"
	}
	if c, ok := m.(*amqp.ConnectionClose); ok {
		return fmt.Sprintf("connection.close %d %q", c.ReplyCode, c.ReplyText)
	}
	return m.Name()
}

// open does the handshake as guest on vhost "/" and opens channel 1.
func (c *rawClient) open(heartbeat uint16, caps amqp.Table) {
	c.t.Helper()
	c.send(amqp.ProtocolHeader[:])
	c.expect("connection.start")
	props := amqp.Table{{Key: "product", Value: "rawclient"}}
	if caps != nil {
		props = append(props, amqp.Field{Key: "capabilities", Value: caps})
	}
	c.sendMethod(0, &amqp.ConnectionStartOk{ClientProperties: props, Mechanism: "PLAIN", Response: "\x00guest\x00guest", Locale: "en_US"})
	tune := c.expect("connection.tune").(*amqp.ConnectionTune)
	c.tune = *tune
	c.sendMethod(0, &amqp.ConnectionTuneOk{ChannelMax: tune.ChannelMax, FrameMax: tune.FrameMax, Heartbeat: heartbeat})
	c.sendMethod(0, &amqp.ConnectionOpen{VirtualHost: "/"})
	c.expect("connection.open-ok")
	c.sendMethod(1, &amqp.ChannelOpen{})
	c.expect("channel.open-ok")
}

// closed reads until the server closes the connection and returns its
// connection.close, or nil when the TCP connection ended without one.
func (c *rawClient) closed() *amqp.ConnectionClose {
	c.t.Helper()
	for {
		_, m, err := c.next()
		if err != nil {
			var fe *amqp.FrameError
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &fe) || isReset(err) {
				return nil
			}
			c.t.Fatalf("waiting for the connection to close: %v", err)
		}
		if cl, ok := m.(*amqp.ConnectionClose); ok {
			c.sendMethod(0, &amqp.ConnectionCloseOk{})
			return cl
		}
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op)
}

// publishFrames builds basic.publish with a header and one body frame.
func publishFrames(ch uint16, body []byte) []byte {
	b := amqp.AppendMethodFrame(nil, ch, &amqp.BasicPublish{RoutingKey: "nowhere"})
	b = amqp.AppendContentHeaderFrame(b, ch, 60, uint64(len(body)), &amqp.Properties{})
	return amqp.AppendFrame(b, amqp.FrameBody, ch, body)
}
