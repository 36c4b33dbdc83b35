package chaos

import (
	"context"
	"fmt"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ConsumerConfig configures a consumer: it consumes a queue with manual
// acks and a prefetch, acks each message after AckDelay, settles its acks
// every SettleInterval, and after any error connects to the next address
// and consumes again.
type ConsumerConfig struct {
	ClientConfig
	Queue string
	// Prefetch is the basic.qos prefetch count.
	Prefetch int
	// CancelOnFailover consumes with x-cancel-on-ha-failover=true: a
	// failover then sends basic.cancel, which is recorded, and the
	// consumer consumes again on the same channel.
	CancelOnFailover bool
	// Args are more basic.consume arguments.
	Args amqp.Table
	// AckDelay is how long a message is "processed" before its ack, so
	// faults find deliveries in flight. 0 acks at once.
	AckDelay time.Duration
	// SettleInterval is how often, when acks were sent since the last
	// time, a passive queue.declare round trip confirms that the broker
	// has them (KindSettled). Negative: never (every ack stays unsettled).
	SettleInterval time.Duration
}

// ArgCancelOnFailover is the consume argument asking for basic.cancel on
// a failover.
const ArgCancelOnFailover = "x-cancel-on-ha-failover"

// RunConsumer consumes until ctx is done, recording into h. It returns an
// error only for a bad config; connection errors make it reconnect.
func RunConsumer(ctx context.Context, h *History, cfg ConsumerConfig) error {
	c, err := newConsumer(h, cfg)
	if err != nil {
		return err
	}
	c.run(ctx)
	return nil
}

type consumer struct {
	cfg  ConsumerConfig
	h    *History
	conn int
}

func newConsumer(h *History, cfg ConsumerConfig) (*consumer, error) {
	if err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	if cfg.Queue == "" {
		return nil, fmt.Errorf("%w: consumer %s: no Queue", ErrConfig, cfg.ID)
	}
	if cfg.Prefetch <= 0 {
		cfg.Prefetch = DefaultPrefetch
	}
	if cfg.SettleInterval == 0 {
		cfg.SettleInterval = DefaultSettleInterval
	}
	return &consumer{cfg: cfg, h: h}, nil
}

func (c *consumer) run(ctx context.Context) {
	for i := 0; ctx.Err() == nil; i++ {
		addr := c.cfg.addr(i)
		err := c.session(ctx, addr)
		if err == nil || ctx.Err() != nil {
			return
		}
		c.cfg.Logger.Debug().Err(err).Str("addr", addr).Msg("consumer: connection lost")
		if !sleep(ctx, c.cfg.Backoff) {
			return
		}
	}
}

// session runs one connection. It returns nil when ctx is done and the
// connection was closed, an error when the connection failed.
func (c *consumer) session(ctx context.Context, addr string) error {
	l, err := c.cfg.dial(ctx, addr)
	if err != nil {
		return err
	}
	l.watch(ctx, c.cfg.StopGrace+time.Second)
	c.conn++
	c.h.Connect(c.cfg.ID, c.conn, addr)
	c.cfg.Logger.Debug().Str("addr", addr).Int("conn", c.conn).Msg("consumer: connected")

	s := &conSession{c: c, l: l}
	err = s.run(ctx)
	if err != nil {
		c.h.Disconnect(c.cfg.ID, c.conn, err)
	}
	l.close(time.Second)
	return err
}

// conSession is the state of one consumer connection.
type conSession struct {
	c  *consumer
	l  *link
	ch *amqp.Channel
	// consumes counts basic.consume on this connection (for the tags).
	consumes int
	// lastAcked and lastSettled are delivery tags.
	lastAcked, lastSettled uint64
}

func (s *conSession) run(ctx context.Context) error {
	c := s.c
	connClosed := s.l.conn.NotifyClose(make(chan *amqp.Error, 1))
	ch, err := s.l.conn.Channel()
	if err != nil {
		return err
	}
	s.ch = ch
	chClosed := ch.NotifyClose(make(chan *amqp.Error, 1))
	if err := ch.Qos(c.cfg.Prefetch, 0, false); err != nil {
		return err
	}
	// The library sends a cancel's tag here before it closes that
	// consumer's delivery channel.
	cancels := ch.NotifyCancel(make(chan string, 4))
	deliveries, err := s.consume()
	if err != nil {
		return err
	}
	var settle <-chan time.Time
	if c.cfg.SettleInterval > 0 {
		t := time.NewTicker(c.cfg.SettleInterval)
		defer t.Stop()
		settle = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return s.settle()
		case d, ok := <-deliveries:
			if !ok {
				select {
				case <-cancels:
					c.h.Cancel(c.cfg.ID, c.conn)
					c.cfg.Logger.Debug().Int("conn", c.conn).Msg("consumer: cancelled by the server")
					if deliveries, err = s.consume(); err != nil {
						return err
					}
					continue
				default:
					return closeErr(connClosed, chClosed)
				}
			}
			if err := s.handle(ctx, d); err != nil {
				return err
			}
		case <-settle:
			if err := s.settle(); err != nil {
				return err
			}
		case e := <-connClosed:
			return orClosed(e)
		case e := <-chClosed:
			return orClosed(e)
		}
	}
}

func (s *conSession) consume() (<-chan amqp.Delivery, error) {
	c := s.c
	s.consumes++
	args := amqp.Table{}
	for k, v := range c.cfg.Args {
		args[k] = v
	}
	if c.cfg.CancelOnFailover {
		args[ArgCancelOnFailover] = true
	}
	tag := c.cfg.ID + "-" + strconv.Itoa(c.conn) + "-" + strconv.Itoa(s.consumes)
	return s.ch.Consume(c.cfg.Queue, tag, false, false, false, false, args)
}

// handle records a delivery and acks it. When ctx ends during AckDelay it
// leaves the message unacked (the broker puts it back on close).
func (s *conSession) handle(ctx context.Context, d amqp.Delivery) error {
	c := s.c
	id, raw := messageID(d.MessageId, d.Body)
	e := Event{Kind: KindDeliver, Client: c.cfg.ID, Conn: c.conn, Msg: id, Tag: d.DeliveryTag, Redelivered: d.Redelivered}
	if id.IsZero() {
		e.Err = raw
	}
	c.h.Record(e)
	if c.cfg.AckDelay > 0 && !sleep(ctx, c.cfg.AckDelay) {
		return nil
	}
	if err := d.Ack(false); err != nil {
		return err
	}
	c.h.Ack(c.cfg.ID, c.conn, id, d.DeliveryTag)
	s.lastAcked = d.DeliveryTag
	return nil
}

// settle makes a round trip on the channel if acks were sent since the
// last one: the broker handles a channel's methods in order, so once the
// passive declare is answered it has every earlier ack.
func (s *conSession) settle() error {
	if s.lastAcked == s.lastSettled || s.c.cfg.SettleInterval < 0 {
		return nil
	}
	tag := s.lastAcked
	if _, err := s.ch.QueueDeclarePassive(s.c.cfg.Queue, true, false, false, false, nil); err != nil {
		return err
	}
	s.lastSettled = tag
	s.c.h.Settled(s.c.cfg.ID, s.c.conn, tag)
	return nil
}
