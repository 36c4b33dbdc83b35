package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func main() {
	broker := flag.String("broker", "127.0.0.1:5672", "RabbitMQ address")
	out := flag.String("out", "proxy/amqp/testdata/capture", "directory for client.bin and server.bin")
	flag.Parse()
	if err := run(*broker, *out); err != nil {
		fmt.Fprintln(os.Stderr, "capture:", err)
		os.Exit(1)
	}
}

func run(broker, out string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	var (
		wg                  sync.WaitGroup
		fromClient, fromSrv bytes.Buffer
		hopErr              error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		hopErr = hop(ln, broker, &fromClient, &fromSrv)
	}()
	sessErr := session("amqp://guest:guest@" + ln.Addr().String() + "/")
	ln.Close()
	wg.Wait()
	if sessErr != nil {
		return fmt.Errorf("session: %w", sessErr)
	}
	if hopErr != nil {
		return fmt.Errorf("recording hop: %w", hopErr)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "client.bin"), fromClient.Bytes(), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "server.bin"), fromSrv.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Printf("capture: client sent %d octets, broker sent %d\n", fromClient.Len(), fromSrv.Len())
	return nil
}

// hop accepts one connection on ln, connects it to broker and copies both
// ways, keeping a copy of each direction, until both sides have closed.
func hop(ln net.Listener, broker string, fromClient, fromSrv *bytes.Buffer) error {
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	b, err := net.DialTimeout("tcp", broker, 5*time.Second)
	if err != nil {
		return err
	}
	defer b.Close()
	var wg sync.WaitGroup
	var errUp, errDown error
	wg.Add(2)
	go func() {
		defer wg.Done()
		errUp = pipe(b.(*net.TCPConn), c, fromClient)
	}()
	go func() {
		defer wg.Done()
		errDown = pipe(c.(*net.TCPConn), b, fromSrv)
	}()
	wg.Wait()
	return errors.Join(errUp, errDown)
}

// pipe copies src to dst and rec until src ends, then half-closes dst.
func pipe(dst *net.TCPConn, src net.Conn, rec *bytes.Buffer) error {
	_, err := io.Copy(dst, io.TeeReader(src, rec))
	_ = dst.CloseWrite() // the copy's error (below) is the one that matters
	if errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) {
		// RabbitMQ resets the socket once it has sent connection.close-ok
		// if the client's FIN arrives late; nothing is lost by then.
		err = nil
	}
	return err
}

// everyType is a header table with a value of every field type amqp091-go
// writes.
func everyType() amqp.Table {
	return amqp.Table{
		"bool":      true,
		"int8":      int8(-8),
		"uint8":     byte(200),
		"int16":     int16(-300),
		"uint16":    uint16(60000),
		"int32":     int32(-70000),
		"uint32":    uint32(4_000_000_000),
		"int64":     int64(-5_000_000_000_000),
		"float32":   float32(1.5),
		"float64":   2.25,
		"decimal":   amqp.Decimal{Scale: 2, Value: 314},
		"string":    "text é",
		"bytes":     []byte{0, 1, 2, 0xff},
		"array":     []any{int32(1), "two", amqp.Table{"three": int16(3)}, []any{false, nil}},
		"timestamp": time.Unix(1_700_000_000, 0),
		"table":     amqp.Table{"nested": amqp.Table{"deeper": "yes"}, "n": int64(1)},
		"void":      nil,
	}
}

func session(url string) error {
	conn, err := amqp.DialConfig(url, amqp.Config{
		Heartbeat: 10 * time.Second,
		FrameSize: 4096, // so that the large body below spans several frames
		Locale:    "en_US",
		Properties: amqp.Table{
			"product":         "mirrorproxy codec capture",
			"connection_name": "capture",
			"capture_types":   everyType(),
		},
	})
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()

	// Topology.
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.Qos(10, 0, false); err != nil {
		return fmt.Errorf("qos: %w", err)
	}
	if err := ch.Qos(50, 0, true); err != nil {
		return fmt.Errorf("global qos: %w", err)
	}
	steps := []struct {
		what string
		do   func() error
	}{
		{"declare capture.ae", func() error { return ch.ExchangeDeclare("capture.ae", "fanout", false, true, false, false, nil) }},
		{"declare capture.direct", func() error {
			return ch.ExchangeDeclare("capture.direct", "direct", true, false, false, false, amqp.Table{"alternate-exchange": "capture.ae"})
		}},
		{"declare capture.headers", func() error {
			return ch.ExchangeDeclare("capture.headers", "headers", false, true, false, false, nil)
		}},
		{"declare internal capture.internal", func() error {
			return ch.ExchangeDeclare("capture.internal", "topic", false, true, true, false, nil)
		}},
		{"passive capture.direct", func() error {
			return ch.ExchangeDeclarePassive("capture.direct", "direct", true, false, false, false, amqp.Table{"alternate-exchange": "capture.ae"})
		}},
		{"declare capture.dlx", func() error { return ch.ExchangeDeclare("capture.dlx", "fanout", false, true, false, false, nil) }},
		{"declare capture.dead", func() error {
			_, err := ch.QueueDeclare("capture.dead", false, false, false, false, nil)
			return err
		}},
		{"bind capture.dead", func() error { return ch.QueueBind("capture.dead", "", "capture.dlx", false, nil) }},
		{"declare capture.work", func() error {
			args := everyType()
			args["x-message-ttl"] = int32(600_000)
			args["x-max-length"] = int64(1000)
			args["x-dead-letter-exchange"] = "capture.dlx"
			args["x-max-priority"] = byte(9)
			_, err := ch.QueueDeclare("capture.work", false, false, false, false, args)
			return err
		}},
		{"bind capture.work", func() error {
			return ch.QueueBind("capture.work", "work", "capture.direct", false, amqp.Table{"x-capture": int32(1)})
		}},
		{"bind headers", func() error {
			return ch.QueueBind("capture.work", "", "capture.headers", false, amqp.Table{"x-match": "any", "kind": "order", "n": int32(5)})
		}},
		{"exchange bind", func() error {
			return ch.ExchangeBind("capture.headers", "to-headers", "capture.direct", false, amqp.Table{"x-capture": "e2e"})
		}},
		{"exchange unbind", func() error {
			return ch.ExchangeUnbind("capture.headers", "to-headers", "capture.direct", false, amqp.Table{"x-capture": "e2e"})
		}},
		{"unbind headers", func() error {
			return ch.QueueUnbind("capture.work", "", "capture.headers", amqp.Table{"x-match": "any", "kind": "order", "n": int32(5)})
		}},
		{"server-named queue", func() error {
			q, err := ch.QueueDeclare("", false, true, true, false, amqp.Table{"x-expires": int32(60_000)})
			if err == nil && q.Name == "" {
				err = errors.New("no name")
			}
			return err
		}},
		{"flow", func() error { return ch.Flow(true) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("%s: %w", s.what, err)
		}
	}

	// Publishes: one with every property, plain ones, a large body.
	full := amqp.Publishing{
		ContentType:     "application/json",
		ContentEncoding: "identity",
		Headers:         everyType(),
		DeliveryMode:    amqp.Persistent,
		Priority:        5,
		CorrelationId:   "corr-1",
		ReplyTo:         "capture.replies",
		Expiration:      "600000",
		MessageId:       "msg-1",
		Timestamp:       time.Unix(1_700_000_001, 0),
		Type:            "capture.full",
		UserId:          "guest",
		AppId:           "capture",
		Body:            []byte(`{"hello":"world"}`),
	}
	if err := ch.Publish("capture.direct", "work", false, false, full); err != nil {
		return err
	}
	for i := 2; i <= 5; i++ {
		if err := ch.Publish("", "capture.work", false, false, amqp.Publishing{MessageId: fmt.Sprintf("msg-%d", i), Body: []byte(fmt.Sprintf("body %d", i))}); err != nil {
			return err
		}
	}
	if err := ch.Publish("", "capture.work", false, false, amqp.Publishing{MessageId: "msg-6", Body: bytes.Repeat([]byte("large "), 2000)}); err != nil {
		return err
	}
	if err := ch.Publish("", "capture.work", false, false, amqp.Publishing{MessageId: "msg-7"}); err != nil { // empty body
		return err
	}

	// Consume: ack 1, nack 2-3 with requeue (they come back redelivered),
	// reject 4 without requeue (dead-lettered), ack the rest at once.
	cons, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := cons.Qos(3, 0, false); err != nil {
		return err
	}
	deliveries, err := cons.Consume("capture.work", "capture-consumer", false, false, false, false, amqp.Table{"x-priority": int32(5)})
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	next := func() (amqp.Delivery, error) {
		select {
		case d, ok := <-deliveries:
			if !ok {
				return d, errors.New("deliveries closed")
			}
			return d, nil
		case <-time.After(10 * time.Second):
			return amqp.Delivery{}, errors.New("no delivery within 10s")
		}
	}
	for got := 0; got < 9; got++ {
		d, err := next()
		if err != nil {
			return fmt.Errorf("delivery %d: %w", got+1, err)
		}
		switch {
		case d.MessageId == "msg-1":
			err = d.Ack(false)
		case (d.MessageId == "msg-2" || d.MessageId == "msg-3") && !d.Redelivered:
			if d.MessageId == "msg-3" {
				err = d.Nack(true, true)
			}
		case d.MessageId == "msg-4":
			err = d.Reject(false)
		default: // everything before is settled, so multiple is safe
			err = d.Ack(got%2 == 0)
		}
		if err != nil {
			return err
		}
	}
	if err := cons.Cancel("capture-consumer", false); err != nil {
		return fmt.Errorf("cancel: %w", err)
	}
	// basic.recover is deprecated in RabbitMQ but still AMQP 0-9-1: the
	// capture records it for the codec.
	if err := cons.Recover(true); err != nil { //nolint:staticcheck // SA1019: on purpose, see above
		return fmt.Errorf("recover: %w", err)
	}

	// Get the dead-lettered message (its x-death headers come from the
	// broker), then find the queue empty.
	var d amqp.Delivery
	deadline := time.Now().Add(10 * time.Second)
	for {
		var ok bool
		d, ok, err = ch.Get("capture.dead", false)
		if err != nil {
			return fmt.Errorf("get: %w", err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("dead-lettered message did not arrive")
		}
		time.Sleep(50 * time.Millisecond) // polling the broker, not synchronising goroutines
	}
	if _, ok := d.Headers["x-death"]; !ok {
		return errors.New("dead-lettered message has no x-death header")
	}
	if err := d.Ack(false); err != nil {
		return err
	}
	if _, ok, err := ch.Get("capture.dead", true); err != nil || ok {
		return fmt.Errorf("second get: ok %v err %w", ok, err)
	}

	// Mandatory publish nobody can route: basic.return.
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	if err := ch.Publish("", "capture.nowhere", true, false, amqp.Publishing{Body: []byte("unroutable"), Headers: amqp.Table{"why": "return"}}); err != nil {
		return err
	}
	select {
	case <-returns:
	case <-time.After(10 * time.Second):
		return errors.New("no basic.return")
	}

	// Transactions.
	tx, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := tx.Tx(); err != nil {
		return err
	}
	if err := tx.Publish("", "capture.dead", false, false, amqp.Publishing{Body: []byte("committed")}); err != nil {
		return err
	}
	if err := tx.TxCommit(); err != nil {
		return err
	}
	if err := tx.Publish("", "capture.dead", false, false, amqp.Publishing{Body: []byte("rolled back")}); err != nil {
		return err
	}
	if err := tx.TxRollback(); err != nil {
		return err
	}
	if err := tx.Close(); err != nil {
		return err
	}

	// Publisher confirms.
	cf, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := cf.Confirm(false); err != nil {
		return err
	}
	for i := 0; i < 3; i++ {
		dc, err := cf.PublishWithDeferredConfirm("", "capture.dead", false, false, amqp.Publishing{Body: []byte("confirmed")})
		if err != nil {
			return err
		}
		if !dc.Wait() {
			return errors.New("publish nacked")
		}
	}

	// A channel error: the broker closes the channel with 404.
	bad, err := conn.Channel()
	if err != nil {
		return err
	}
	var ae *amqp.Error
	if _, err := bad.QueueDeclarePassive("capture.missing", false, false, false, false, nil); !errors.As(err, &ae) || ae.Code != amqp.NotFound {
		return fmt.Errorf("passive declare of a missing queue: %w", err)
	}

	// Clean up.
	if n, err := ch.QueuePurge("capture.dead", false); err != nil || n == 0 {
		return fmt.Errorf("purge: %d %w", n, err)
	}
	for _, q := range []string{"capture.work", "capture.dead"} {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			return fmt.Errorf("delete %s: %w", q, err)
		}
	}
	for _, e := range []string{"capture.direct", "capture.headers", "capture.internal", "capture.dlx", "capture.ae"} {
		if err := ch.ExchangeDelete(e, false, false); err != nil {
			return fmt.Errorf("delete %s: %w", e, err)
		}
	}
	if err := conn.UpdateSecret("guest", "capture rotates its secret"); err != nil {
		return fmt.Errorf("update-secret: %w", err)
	}
	if err := ch.Close(); err != nil {
		return err
	}
	return conn.Close()
}
