package proxy_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mirrorproxy/mirrorproxy/proxy"
	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// recv reads n frames (heartbeats skipped) and names each "channel:method"
// ("channel:content" for a content frame, the reply code after a close).
// A connection that ends is "eof".
func (c *rawClient) recv(n int) []string {
	c.t.Helper()
	var got []string
	for range n {
		f, m, err := c.next()
		switch {
		case err != nil:
			var op interface{ Timeout() bool }
			if errors.As(err, &op) && op.Timeout() {
				c.t.Fatalf("after %v: timed out waiting for frame %d of %d", got, len(got)+1, n)
			}
			return append(got, "eof")
		case m == nil:
			got = append(got, fmt.Sprintf("%d:content", f.Channel))
		default:
			got = append(got, fmt.Sprintf("%d:%s", f.Channel, closeName(m)))
		}
	}
	return got
}

// closeName is a method's name, with the reply code of a close.
func closeName(m amqp.Method) string {
	switch m := m.(type) {
	case *amqp.ChannelClose:
		return fmt.Sprintf("%s %d", m.Name(), m.ReplyCode)
	case *amqp.ConnectionClose:
		return fmt.Sprintf("%s %d", m.Name(), m.ReplyCode)
	}
	return m.Name()
}

// toEOF reads until the connection ends and names what came.
func (c *rawClient) toEOF() []string {
	c.t.Helper()
	var got []string
	for {
		r := c.recv(1)
		got = append(got, r...)
		if r[0] == "eof" {
			return got
		}
		if strings.HasPrefix(r[0], "0:connection.close ") {
			c.sendMethod(0, &amqp.ConnectionCloseOk{})
		}
	}
}

func frameOf(ch uint16, m amqp.Method) []byte { return amqp.AppendMethodFrame(nil, ch, m) }

func join(parts ...[]byte) []byte { return slices.Concat(parts...) }

// toMissing is a publish to an exchange that does not exist: the broker
// closes the channel with 404 once it has the whole message.
func toMissing(ch uint16) []byte {
	b := frameOf(ch, &amqp.BasicPublish{Exchange: "issue13-missing", RoutingKey: "k"})
	b = amqp.AppendContentHeaderFrame(b, ch, 60, 4, &amqp.Properties{})
	return amqp.AppendFrame(b, amqp.FrameBody, ch, []byte("lost"))
}

// crossings are the races of issue 13, each scripted frame by frame: what
// the client sends at once (so that it crosses what the broker sends) and
// what it reads. Each returns what the client saw, compared between the
// broker directly and the proxy. Frames that two of the broker's channels
// send at once have no order between them: those steps sort what came.
var crossings = []struct {
	name string
	run  func(c *rawClient) []string
	want []string
}{
	{"channel.close from both sides", func(c *rawClient) []string {
		c.send(join(toMissing(1), frameOf(1, &amqp.ChannelClose{ReplyCode: 200, ReplyText: "bye"})))
		got := c.recv(1) // the broker's close, crossing ours
		c.sendMethod(1, &amqp.ChannelCloseOk{})
		got = append(got, c.recv(1)...) // its answer to ours
		c.sendMethod(1, &amqp.ChannelOpen{})
		c.sendMethod(1, &amqp.BasicQos{PrefetchCount: 1})
		return append(got, c.recv(2)...)
	}, []string{"1:channel.close 404", "1:channel.close-ok", "1:channel.open-ok", "1:basic.qos-ok"}},

	{"channel.close-ok crossing a new channel.open", func(c *rawClient) []string {
		c.send(join(toMissing(1), frameOf(1, &amqp.ChannelClose{ReplyCode: 200, ReplyText: "bye"})))
		got := c.recv(1)
		c.send(join(frameOf(1, &amqp.ChannelCloseOk{}), frameOf(1, &amqp.ChannelOpen{})))
		two := c.recv(2) // the old channel's close-ok and the new one's open-ok: two writers
		slices.Sort(two)
		got = append(got, two...)
		c.sendMethod(1, &amqp.BasicQos{PrefetchCount: 1})
		return append(got, c.recv(1)...)
	}, []string{"1:channel.close 404", "1:channel.close-ok", "1:channel.open-ok", "1:basic.qos-ok"}},

	{"methods and content in flight when the broker closes", func(c *rawClient) []string {
		c.send(join(toMissing(1), publishFrames(1, []byte("late")), frameOf(1, &amqp.BasicQos{PrefetchCount: 1})))
		got := c.recv(1)
		c.send(join(frameOf(1, &amqp.ChannelCloseOk{}), frameOf(1, &amqp.ChannelOpen{})))
		return append(got, c.recv(1)...)
	}, []string{"1:channel.close 404", "1:channel.open-ok"}},

	{"broker closes during a publish's content frames", func(c *rawClient) []string {
		late := publishFrames(1, []byte("late"))
		m, _ := amqp.NewReader(strings.NewReader(string(late)), 0).ReadFrame()
		method := append([]byte(nil), m.Raw...)
		c.send(join(toMissing(1), method))
		got := c.recv(1)
		c.send(join(late[len(method):], frameOf(1, &amqp.ChannelCloseOk{}), frameOf(1, &amqp.ChannelOpen{})))
		return append(got, c.recv(1)...)
	}, []string{"1:channel.close 404", "1:channel.open-ok"}},

	{"basic.cancel from the broker crossing the client's", func(c *rawClient) []string {
		q := fmt.Sprintf("issue13.cancel.%d", time.Now().UnixNano())
		c.sendMethod(1, &amqp.QueueDeclare{Queue: q})
		c.sendMethod(1, &amqp.BasicConsume{Queue: q, ConsumerTag: "t"})
		got := c.recv(2)
		// Another connection deletes the queue: the broker cancels the
		// consumer (the client announced consumer_cancel_notify), and the
		// client's own basic.cancel, sent before it read that, crosses it.
		other := dialRaw(c.t, c.conn.RemoteAddr().String())
		other.open(0, nil)
		other.sendMethod(1, &amqp.QueueDelete{Queue: q})
		other.expect("queue.delete-ok")
		c.sendMethod(1, &amqp.BasicCancel{ConsumerTag: "t"})
		got = append(got, c.recv(2)...)
		c.sendMethod(1, &amqp.BasicQos{PrefetchCount: 1})
		return append(got, c.recv(1)...)
	}, []string{"1:queue.declare-ok", "1:basic.consume-ok", "1:basic.cancel", "1:basic.cancel-ok", "1:basic.qos-ok"}},

	{"connection.close from both sides", func(c *rawClient) []string {
		// A second channel.open is a connection error at the broker
		// (504); the client's own connection.close crosses it.
		c.send(join(frameOf(1, &amqp.ChannelOpen{}), frameOf(0, &amqp.ConnectionClose{ReplyCode: 200, ReplyText: "bye"})))
		return c.toEOF()
	}, []string{"0:connection.close 504", "eof"}},
}

// TestCrossingsAsTheBrokerSettlesThem plays each crossing against the
// broker directly and through the proxy: the client sees the same.
func TestCrossingsAsTheBrokerSettlesThem(t *testing.T) {
	b := needBroker(t)
	p := startProxy(t, proxy.Options{})
	caps := amqp.Table{{Key: "consumer_cancel_notify", Value: true}}
	for _, tc := range crossings {
		t.Run(tc.name, func(t *testing.T) {
			var seen [2][]string
			for i, addr := range []string{b.AMQPAddr, p.Addr} {
				c := dialRaw(t, addr)
				c.open(0, caps)
				seen[i] = tc.run(c)
			}
			t.Logf("direct: %v; proxy: %v", seen[0], seen[1])
			if !slices.Equal(seen[0], seen[1]) {
				t.Fatalf("through the proxy the client saw %v, directly %v", seen[1], seen[0])
			}
			if tc.want != nil && !slices.Equal(seen[0], tc.want) {
				t.Fatalf("the broker answered %v, the test expects %v", seen[0], tc.want)
			}
		})
	}
	// The one connection error is the second channel.open's, which the
	// proxy finds as the broker does (same code, same words).
	if n := strings.Count(p.Logs.String(), "protocol error"); n != 1 {
		t.Errorf("%d protocol errors in the proxy's log, want the one of the connection.close crossing", n)
	}
}

// issue13 is the scenario of issue 13 with amqp091-go: channels 1 and 2,
// a publish on 1 to an exchange that does not exist, channel 1 closed at
// once (its close crosses the broker's 404), then an exchange declared on
// channel 2, which must work.
func issue13(url string, run int) error {
	conn, err := amqp091.Dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch1, err := conn.Channel()
	if err != nil {
		return err
	}
	ch2, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := ch1.Publish("issue13-missing", "k", false, false, amqp091.Publishing{Body: []byte("lost")}); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	_ = ch1.Close() // nil, or the broker's 404 when it came first: both are fine
	x := fmt.Sprintf("issue13.x.%d", run)
	if err := ch2.ExchangeDeclare(x, "fanout", false, false, false, false, nil); err != nil {
		return fmt.Errorf("declare on channel 2: %w", err)
	}
	if err := ch2.ExchangeDelete(x, false, false); err != nil {
		return fmt.Errorf("delete on channel 2: %w", err)
	}
	return conn.Close()
}

// TestIssue13ChannelCloseCrossingThroughTheProxy runs the issue's scenario
// 100 times in a row directly and through one sidecar.
func TestIssue13ChannelCloseCrossingThroughTheProxy(t *testing.T) {
	b := needBroker(t)
	p := startProxy(t, proxy.Options{})
	const runs = 100
	for _, target := range []struct{ name, url string }{
		{"direct", b.URL},
		{"proxy", p.URL()},
	} {
		ok := 0
		for i := range runs {
			if err := issue13(target.url, i); err != nil {
				t.Errorf("%s, run %d: %v", target.name, i+1, err)
				continue
			}
			ok++
		}
		t.Logf("%s: %d/%d", target.name, ok, runs)
	}
	if line := p.Logs.lineWith("protocol error"); line != "" {
		t.Errorf("the proxy closed a connection on its own: %s", line)
	}
}
