package chaos

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/mirrorproxy/mirrorproxy/testenv"
)

// The package's RabbitMQ node, started by the first test that needs it
// and closed in TestMain.
var (
	brokerOnce  sync.Once
	brokerGroup *testenv.Group
	brokerErr   error
)

func TestMain(m *testing.M) {
	code := m.Run()
	removeSidecarBinary()
	if brokerGroup != nil {
		if err := brokerGroup.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "closing the test broker:", err)
		}
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// startBroker returns the package's RabbitMQ node (skipped with -short)
// and a goleak option that ignores what testenv runs.
func startBroker(t *testing.T) (*testenv.Node, goleak.Option) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a RabbitMQ broker (not started with -short)")
	}
	brokerOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		brokerGroup, brokerErr = testenv.StartGroup(ctx, testenv.Options{Nodes: 1})
	})
	if brokerErr != nil {
		t.Fatalf("starting the test broker: %v", brokerErr)
	}
	return brokerGroup.Nodes[0], goleak.IgnoreCurrent()
}

// checkFor polls f until it returns nil or timeout passes.
func checkFor(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// connTracker dials and remembers the connections, so a test can break
// them under a client.
type connTracker struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (c *connTracker) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err == nil {
		c.mu.Lock()
		c.conns = append(c.conns, conn)
		c.mu.Unlock()
	}
	return conn, err
}

func (c *connTracker) breakAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		conn.Close()
	}
	c.conns = nil
}

func countKind(h *History, client string, k Kind) int {
	n := 0
	for _, e := range h.Events() {
		if e.Kind == k && (client == "" || e.Client == client) {
			n++
		}
	}
	return n
}

func TestWorkloadAgainstBroker(t *testing.T) {
	n, ignore := startBroker(t)
	defer goleak.VerifyNone(t, ignore)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	const queue = "chaos-workload"
	if err := DeclareQueue(ctx, n.AMQPAddr, queue, nil); err != nil {
		t.Fatal(err)
	}
	h := NewHistory(nil)
	var consumerConns connTracker
	// A second, unused address first: every client must move on from it.
	dead := deadAddr(t)
	w := Workload{
		History: h,
		Producers: []ProducerConfig{{
			ClientConfig: ClientConfig{ID: "p0", Addrs: []string{dead, n.URL}, Backoff: 50 * time.Millisecond},
			RoutingKey:   queue, Rate: 300, MaxInFlight: 32,
		}, {
			ClientConfig: ClientConfig{ID: "p1", Addrs: []string{n.AMQPAddr}, Backoff: 50 * time.Millisecond},
			RoutingKey:   queue, MaxInFlight: 8, Count: 400,
		}},
		Consumers: []ConsumerConfig{{
			ClientConfig: ClientConfig{ID: "c0", Addrs: []string{n.URL}, Dial: consumerConns.dial, Backoff: 50 * time.Millisecond},
			Queue:        queue, Prefetch: 20, AckDelay: time.Millisecond, CancelOnFailover: true,
		}, {
			ClientConfig: ClientConfig{ID: "c1", Addrs: []string{n.URL}, Backoff: 50 * time.Millisecond},
			Queue:        queue, Prefetch: 5, SettleInterval: -1,
		}},
	}
	run, err := w.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			run.Stop()
		}
	}()

	checkFor(t, 30*time.Second, func() error {
		if countKind(h, "c0", KindAck) < 50 {
			return errors.New("c0 has not acked 50 messages")
		}
		return nil
	})
	// Break the consumer's TCP connection under it.
	h.Fault("break-consumer-conn", "n0")
	consumerConns.breakAll()
	checkFor(t, 30*time.Second, func() error {
		if countKind(h, "c0", KindConnect) < 2 {
			return errors.New("c0 did not reconnect")
		}
		return nil
	})
	h.Heal("break-consumer-conn", "n0")
	time.Sleep(500 * time.Millisecond)
	// Then every connection, closed by the broker.
	h.Fault("close_all_connections", "n0")
	if out, err := n.Ctl(ctx, "close_all_connections", "chaos test"); err != nil {
		t.Fatalf("close_all_connections: %v\n%s", err, out)
	}
	h.Heal("close_all_connections", "n0")
	checkFor(t, 30*time.Second, func() error {
		// p1 may have published its Count and stopped already.
		for _, c := range []string{"p0", "c1"} {
			if countKind(h, c, KindConnect) < 2 {
				return errors.New(c + " did not reconnect")
			}
		}
		return nil
	})
	time.Sleep(time.Second)

	run.StopProducers()
	if err := h.WaitQuiet(ctx, 500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	run.Stop()
	stopped = true
	drained, err := Drain(ctx, n.AMQPAddr, queue)
	if err != nil {
		t.Fatal(err)
	}
	r := Check(h.Events(), drained)
	t.Logf("\n%s\n%s\n%s", r, MarkdownHeader, r.MarkdownRow("break + close_all_connections"))
	if !r.Valid() {
		t.Fatalf("invalid run")
	}
	if r.Confirmed < 400 || r.Delivered < r.Confirmed || len(r.Faults) != 4 {
		t.Errorf("confirmed %d, delivered %d, faults %d", r.Confirmed, r.Delivered, len(r.Faults))
	}
	for _, p := range r.Producers {
		if p.ID == "p1" && p.Confirmed != 400 {
			t.Errorf("p1 (Count 400) confirmed %d", p.Confirmed)
		}
	}
	for _, c := range r.Consumers {
		if c.Connects < 2 || c.Deliveries == 0 {
			t.Errorf("consumer %+v", c)
		}
	}
	if countKind(h, "c0", KindSettled) == 0 || countKind(h, "c1", KindSettled) != 0 {
		t.Errorf("settles: c0 %d, c1 %d (SettleInterval -1)", countKind(h, "c0", KindSettled), countKind(h, "c1", KindSettled))
	}
	if countKind(h, "", KindDisconnect) < 4 {
		t.Errorf("only %d disconnects recorded", countKind(h, "", KindDisconnect))
	}
}

// deadAddr is a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// A server's basic.cancel (here: the queue is deleted) is recorded and the
// consumer consumes again.
func TestConsumerCancel(t *testing.T) {
	n, ignore := startBroker(t)
	defer goleak.VerifyNone(t, ignore)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const queue = "chaos-cancel"
	if err := DeclareQueue(ctx, n.AMQPAddr, queue, nil); err != nil {
		t.Fatal(err)
	}
	h := NewHistory(nil)
	run, err := Workload{History: h, Consumers: []ConsumerConfig{{
		ClientConfig: ClientConfig{ID: "c", Addrs: []string{n.AMQPAddr}, Backoff: 20 * time.Millisecond},
		Queue:        queue,
	}}}.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer run.Stop()
	checkFor(t, 10*time.Second, func() error {
		if countKind(h, "c", KindConnect) == 0 {
			return errors.New("not connected")
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond) // let basic.consume-ok arrive
	err = withChannel(ctx, n.AMQPAddr, func(ch *amqp.Channel) error {
		if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
			return err
		}
		_, err := ch.QueueDeclare(queue, true, false, false, false, nil)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, func() error {
		if countKind(h, "c", KindCancel) == 0 {
			return errors.New("no cancel recorded")
		}
		return nil
	})
	// Still consuming (on the same or a new connection).
	if err := publishOne(ctx, n.AMQPAddr, queue, MsgID{"x", 1}); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, func() error {
		if countKind(h, "c", KindAck) == 0 {
			return errors.New("nothing consumed after the cancel")
		}
		return nil
	})
}

func publishOne(ctx context.Context, addr, queue string, id MsgID) error {
	return withChannel(ctx, addr, func(ch *amqp.Channel) error {
		if err := ch.Confirm(false); err != nil {
			return err
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false, message(id, 1, 0))
		if err != nil {
			return err
		}
		if ok, err := dc.WaitContext(ctx); err != nil || !ok {
			return errors.Join(errors.New("not confirmed"), err)
		}
		return nil
	})
}

func TestDrain(t *testing.T) {
	n, ignore := startBroker(t)
	defer goleak.VerifyNone(t, ignore)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const queue = "chaos-drain"
	if err := DeclareQueue(ctx, n.AMQPAddr, queue, nil); err != nil {
		t.Fatal(err)
	}
	for i := range uint64(5) {
		if err := publishOne(ctx, n.AMQPAddr, queue, MsgID{"d", i + 1}); err != nil {
			t.Fatal(err)
		}
	}
	err := withChannel(ctx, n.AMQPAddr, func(ch *amqp.Channel) error {
		return ch.PublishWithContext(ctx, "", queue, false, false, amqp.Publishing{Body: []byte("foreign body")})
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []Drained
	checkFor(t, 10*time.Second, func() error {
		d, err := Drain(ctx, n.AMQPAddr, queue)
		got = append(got, d...)
		if err != nil {
			return err
		}
		if len(got) < 6 {
			return errors.New("not all drained yet")
		}
		return nil
	})
	if len(got) != 6 || got[0].Msg != (MsgID{"d", 1}) || got[4].Msg != (MsgID{"d", 5}) || !got[5].Msg.IsZero() || got[5].Raw != "foreign" {
		t.Fatalf("drained %+v", got)
	}
	again, err := Drain(ctx, n.AMQPAddr, queue)
	if err != nil || len(again) != 0 {
		t.Fatalf("second drain: %v, %v", again, err)
	}
}

// A producer whose broker froze still stops within its grace.
func TestStopWithFrozenBroker(t *testing.T) {
	n, ignore := startBroker(t)
	defer goleak.VerifyNone(t, ignore)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const queue = "chaos-frozen"
	if err := DeclareQueue(ctx, n.AMQPAddr, queue, nil); err != nil {
		t.Fatal(err)
	}
	h := NewHistory(nil)
	grace := 300 * time.Millisecond
	run, err := Workload{History: h,
		Producers: []ProducerConfig{{
			ClientConfig: ClientConfig{ID: "p", Addrs: []string{n.AMQPAddr}, StopGrace: grace, Heartbeat: time.Minute},
			RoutingKey:   queue, BodySize: 64 << 10,
		}},
		Consumers: []ConsumerConfig{{
			ClientConfig: ClientConfig{ID: "c", Addrs: []string{n.AMQPAddr}, StopGrace: grace, Heartbeat: time.Minute},
			Queue:        queue,
		}},
	}.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, func() error {
		if countKind(h, "c", KindAck) < 10 {
			return errors.New("not running yet")
		}
		return nil
	})
	if err := n.Pause(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := n.Unpause(); err != nil {
			t.Error(err)
		}
	}()
	time.Sleep(500 * time.Millisecond) // the producer fills the socket and blocks
	began := time.Now()
	run.Stop()
	// Each side: its grace, then the watchdog's extra second, then a
	// bounded close. Generous for a loaded machine; the point is that it
	// returns at all with a one-minute heartbeat.
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("Stop took %v", took)
	}
	t.Logf("stopped in %v; %d unconfirmed at the stop", time.Since(began), countKind(h, "p", KindPublishFailed))
}

func TestConfigErrors(t *testing.T) {
	h := NewHistory(nil)
	ok := ClientConfig{ID: "a", Addrs: []string{"127.0.0.1:1"}}
	for name, w := range map[string]Workload{
		"no history":     {Producers: []ProducerConfig{{ClientConfig: ok, RoutingKey: "q"}}},
		"no id":          {History: h, Producers: []ProducerConfig{{ClientConfig: ClientConfig{Addrs: ok.Addrs}, RoutingKey: "q"}}},
		"no addrs":       {History: h, Consumers: []ConsumerConfig{{ClientConfig: ClientConfig{ID: "c"}, Queue: "q"}}},
		"no routing":     {History: h, Producers: []ProducerConfig{{ClientConfig: ok}}},
		"no queue":       {History: h, Consumers: []ConsumerConfig{{ClientConfig: ok}}},
		"negative rate":  {History: h, Producers: []ProducerConfig{{ClientConfig: ok, RoutingKey: "q", Rate: -1}}},
		"id used twice":  {History: h, Producers: []ProducerConfig{{ClientConfig: ok, RoutingKey: "q"}}, Consumers: []ConsumerConfig{{ClientConfig: ok, Queue: "q"}}},
		"negative start": {History: h, Consumers: []ConsumerConfig{{ClientConfig: ClientConfig{ID: "c", Addrs: ok.Addrs, Start: -1}, Queue: "q"}}},
	} {
		if _, err := w.Start(t.Context()); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: err = %v, want ErrConfig", name, err)
		}
	}
	if err := RunProducer(t.Context(), h, ProducerConfig{ClientConfig: ok}); !errors.Is(err, ErrConfig) {
		t.Errorf("RunProducer: %v", err)
	}
	if err := RunConsumer(t.Context(), h, ConsumerConfig{ClientConfig: ok}); !errors.Is(err, ErrConfig) {
		t.Errorf("RunConsumer: %v", err)
	}
}

func TestAddresses(t *testing.T) {
	c := ClientConfig{ID: "a", Addrs: []string{"h0:1", "amqp://u:p@h1:2/v"}, Start: 3}
	if err := c.withDefaults(); err != nil {
		t.Fatal(err)
	}
	if c.addr(0) != "amqp://u:p@h1:2/v" || c.addr(1) != "h0:1" {
		t.Errorf("addr order: %s %s", c.addr(0), c.addr(1))
	}
	if u := amqpURL("h0:1"); u != "amqp://guest:guest@h0:1/" {
		t.Errorf("amqpURL = %s", u)
	}
}

// Clients stop at once when their context ends while nothing answers.
func TestStopWhileUnreachable(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	h := NewHistory(nil)
	addr := deadAddr(t)
	ctx, cancel := context.WithCancel(t.Context())
	run, err := Workload{History: h,
		Producers: []ProducerConfig{{ClientConfig: ClientConfig{ID: "p", Addrs: []string{addr}}, RoutingKey: "q"}},
		Consumers: []ConsumerConfig{{ClientConfig: ClientConfig{ID: "c", Addrs: []string{addr}}, Queue: "q"}},
	}.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	cancel()
	began := time.Now()
	run.Stop()
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("Stop took %v", took)
	}
	if h.Len() != 0 {
		t.Errorf("recorded %v", h.Events())
	}
}
