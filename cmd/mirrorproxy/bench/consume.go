package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// consumer drains a queue through a target and then measures delivery
// latency with a ping-pong against it.
type consumer struct {
	mode     uint8 // delivery mode of the ping-pong messages
	prefetch int
	body     []byte // the ping-pong producer's body, reused
}

func newConsumer(mode uint8, prefetch, size int) *consumer {
	return &consumer{mode: mode, prefetch: prefetch, body: make([]byte, size)}
}

// consumeResult is one consume run's raw figures.
type consumeResult struct {
	drain time.Duration // basic.consume … last basic.ack written
}

// run consumes from queue, which holds exactly n messages numbered 0…n-1,
// over conn (through the target) with basic.qos(prefetch) and one
// basic.ack(multiple=false) per delivery, checking that they arrive in order.
// Then, with the queue empty, it publishes len(lat) messages one at a time
// over producer (connected directly to the broker) and stores in lat[i] the
// nanoseconds from just before basic.publish to the delivery reaching this
// goroutine (before its basic.ack).
func (c *consumer) run(ctx context.Context, conn, producer *amqp.Connection, queue string, n int, lat []int64) (res consumeResult, err error) {
	ch, err := conn.Channel()
	if err != nil {
		return res, fmt.Errorf("open consume channel: %w", err)
	}
	defer closeChannel(ch, &err)
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	if err := ch.Qos(c.prefetch, 0, false); err != nil {
		return res, fmt.Errorf("basic.qos: %w", err)
	}

	stop := closeOnDone(ctx, conn)
	defer stop()

	start := time.Now()
	deliveries, err := ch.Consume(queue, "mirrorproxy-bench", false, false, false, false, nil)
	if err != nil {
		return res, fmt.Errorf("basic.consume: %w", err)
	}
	// recv waits for the next delivery, checks its sequence number and
	// returns its delivery tag.
	recv := func(want uint64, phase string) (uint64, error) {
		var d amqp.Delivery
		var ok bool
		select {
		case d, ok = <-deliveries:
		case <-ctx.Done():
			return 0, fmt.Errorf("%s: waiting for delivery %d: %w", phase, want, ctx.Err())
		}
		if !ok {
			return 0, channelGone(ctx, closed, fmt.Sprintf("%s: waiting for delivery %d", phase, want))
		}
		if len(d.Body) < 8 {
			return 0, fmt.Errorf("%s: delivery %d has a %d-byte body", phase, want, len(d.Body))
		}
		if got := binary.BigEndian.Uint64(d.Body); got != want {
			return 0, fmt.Errorf("%s: got message %d, expected %d (lost, duplicated or reordered)", phase, got, want)
		}
		return d.DeliveryTag, nil
	}
	ack := func(tag, seq uint64, phase string) error {
		if err := ch.Ack(tag, false); err != nil {
			return fmt.Errorf("%s: basic.ack of message %d: %w", phase, seq, err)
		}
		return nil
	}

	for i := range n {
		tag, err := recv(uint64(i), "drain")
		if err != nil {
			return res, err
		}
		if err := ack(tag, uint64(i), "drain"); err != nil {
			return res, err
		}
	}
	res.drain = time.Since(start)

	if len(lat) == 0 {
		return res, nil
	}
	pch, err := producer.Channel()
	if err != nil {
		return res, fmt.Errorf("open ping-pong producer channel: %w", err)
	}
	defer closeChannel(pch, &err)
	msg := amqp.Publishing{DeliveryMode: c.mode, Body: c.body}
	for i := range lat {
		seq := uint64(n + i)
		binary.BigEndian.PutUint64(c.body, seq)
		t0 := time.Now()
		if err := pch.PublishWithContext(ctx, "", queue, false, false, msg); err != nil {
			return res, fmt.Errorf("ping-pong publish %d: %w", i, err)
		}
		tag, err := recv(seq, "ping-pong")
		if err != nil {
			return res, err
		}
		lat[i] = int64(time.Since(t0))
		if err := ack(tag, seq, "ping-pong"); err != nil {
			return res, err
		}
	}
	return res, nil
}
