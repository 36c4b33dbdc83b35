package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// publisher publishes numbered persistent messages in confirm mode with a
// bounded number in flight. One publisher is used by one goroutine.
type publisher struct {
	mode   uint8 // delivery mode
	window int
	body   []byte          // reused for every message; starts with the sequence number
	sentAt []time.Duration // by sequence number mod window, since start
}

func newPublisher(mode uint8, window, size int) *publisher {
	return &publisher{mode: mode, window: window, body: make([]byte, size), sentAt: make([]time.Duration, window)}
}

// run publishes n messages to queue through the default exchange on a fresh
// confirm-mode channel of conn and returns when all are confirmed. When lat
// is not nil, lat[i] receives message i's publish→confirm latency in
// nanoseconds. elapsed runs from the first publish to the last confirm.
//
// Confirms are read between publishes, without a second goroutine; a confirm
// that arrives while a publish call is writing is seen when it returns, so
// latencies are late by at most one publish call.
func (p *publisher) run(ctx context.Context, conn *amqp.Connection, queue string, n int, lat []int64) (elapsed time.Duration, err error) {
	ch, err := conn.Channel()
	if err != nil {
		return 0, fmt.Errorf("open publish channel: %w", err)
	}
	defer closeChannel(ch, &err)
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	if err := ch.Confirm(false); err != nil {
		return 0, fmt.Errorf("confirm.select: %w", err)
	}
	// Capacity covers the whole window so the library's reader never blocks
	// on us (NotifyPublish's documented requirement).
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, p.window+1))

	stop := closeOnDone(ctx, conn)
	defer stop()

	msg := amqp.Publishing{DeliveryMode: p.mode, Body: p.body}
	published, confirmed := 0, 0
	start := time.Now()

	// take handles one confirmation.
	take := func(c amqp.Confirmation, ok bool) error {
		if !ok {
			return channelGone(ctx, closed, "publish channel closed while confirms were outstanding")
		}
		if want := uint64(confirmed) + 1; c.DeliveryTag != want {
			return fmt.Errorf("confirm for delivery tag %d, expected %d", c.DeliveryTag, want)
		}
		if !c.Ack {
			return fmt.Errorf("broker nacked publish %d", confirmed)
		}
		if lat != nil {
			lat[confirmed] = int64(time.Since(start) - p.sentAt[confirmed%p.window])
		}
		confirmed++
		return nil
	}
	// drain takes every confirmation already there; with block it first
	// waits for one.
	drain := func(block bool) error {
		if block {
			select {
			case c, ok := <-confirms:
				if err := take(c, ok); err != nil {
					return err
				}
			case <-ctx.Done():
				return fmt.Errorf("waiting for confirms (%d of %d confirmed): %w", confirmed, n, ctx.Err())
			}
		}
		for {
			select {
			case c, ok := <-confirms:
				if err := take(c, ok); err != nil {
					return err
				}
			default:
				return nil
			}
		}
	}

	for confirmed < n {
		for published < n && published-confirmed < p.window {
			binary.BigEndian.PutUint64(p.body, uint64(published))
			p.sentAt[published%p.window] = time.Since(start)
			if err := ch.PublishWithContext(ctx, "", queue, false, false, msg); err != nil {
				if errors.Is(err, amqp.ErrClosed) {
					return 0, channelGone(ctx, closed, "publish")
				}
				return 0, fmt.Errorf("publish %d: %w", published, err)
			}
			published++
			if err := drain(false); err != nil {
				return 0, err
			}
		}
		if err := drain(true); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// channelGone explains why a channel stopped: the context, or the broker's
// (or library's) close reason.
func channelGone(ctx context.Context, closed <-chan *amqp.Error, what string) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
	select {
	case e := <-closed:
		if e != nil {
			return fmt.Errorf("%s: channel closed: %w", what, e)
		}
	default:
	}
	return fmt.Errorf("%s: %w", what, amqp.ErrClosed)
}

// closeChannel closes ch and keeps the first error.
func closeChannel(ch *amqp.Channel, err *error) {
	if cerr := ch.Close(); cerr != nil && *err == nil && !errors.Is(cerr, amqp.ErrClosed) {
		*err = fmt.Errorf("close channel: %w", cerr)
	}
}

// closeOnDone closes c when ctx ends, which unblocks a publish stuck on a
// full socket. The returned stop undoes it, or waits for the close to finish.
func closeOnDone(ctx context.Context, c io.Closer) (stop func()) {
	done := make(chan struct{})
	stopAfter := context.AfterFunc(ctx, func() {
		defer close(done)
		_ = c.Close()
	})
	return func() {
		if !stopAfter() {
			<-done
		}
	}
}
