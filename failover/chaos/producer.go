package chaos

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ProducerConfig configures a producer: it publishes persistent messages
// with publisher confirms and, after any error, connects to the next
// address and re-sends every message not confirmed yet.
type ProducerConfig struct {
	ClientConfig
	// Exchange and RoutingKey say where to publish. With Exchange empty
	// (the default exchange) RoutingKey is the queue's name.
	Exchange, RoutingKey string
	// Rate is the most publishes of new messages per second; 0 means as
	// fast as MaxInFlight allows.
	Rate float64
	// MaxInFlight bounds the unconfirmed messages.
	MaxInFlight int
	// BodySize is the size of a message body (at least the id's text).
	BodySize int
	// Count, when positive, stops the producer after so many messages
	// (it still re-sends them until confirmed or stopped).
	Count int
}

// RunProducer publishes until ctx is done, recording into h. It returns an
// error only for a bad config; connection errors make it reconnect.
func RunProducer(ctx context.Context, h *History, cfg ProducerConfig) error {
	p, err := newProducer(h, cfg)
	if err != nil {
		return err
	}
	p.run(ctx)
	return nil
}

type producer struct {
	cfg ProducerConfig
	h   *History
	// conn numbers this producer's connections.
	conn int
	// next is the sequence number of the next new message.
	next uint64
	// unconfirmed are the messages sent and not confirmed, by sequence.
	unconfirmed []*outMsg
}

type outMsg struct {
	id      MsgID
	attempt int
}

func newProducer(h *History, cfg ProducerConfig) (*producer, error) {
	if err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	if cfg.Exchange == "" && cfg.RoutingKey == "" {
		return nil, fmt.Errorf("%w: producer %s: no Exchange nor RoutingKey", ErrConfig, cfg.ID)
	}
	if cfg.Rate < 0 {
		return nil, fmt.Errorf("%w: producer %s: negative Rate", ErrConfig, cfg.ID)
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.BodySize <= 0 {
		cfg.BodySize = DefaultBodySize
	}
	return &producer{cfg: cfg, h: h, next: 1}, nil
}

func (p *producer) run(ctx context.Context) {
	for i := 0; ctx.Err() == nil; i++ {
		addr := p.cfg.addr(i)
		err := p.session(ctx, addr)
		if err == nil || ctx.Err() != nil {
			return
		}
		p.cfg.Logger.Debug().Err(err).Str("addr", addr).Msg("producer: connection lost")
		if !sleep(ctx, p.cfg.Backoff) {
			return
		}
	}
}

// done reports whether the producer has made all its messages and had
// them confirmed.
func (p *producer) done() bool {
	return p.cfg.Count > 0 && p.next > uint64(p.cfg.Count) && len(p.unconfirmed) == 0
}

// session runs one connection: re-sends what is unconfirmed, then
// publishes new messages. It returns nil when ctx is done (or Count is
// reached) and the connection was closed, an error when the connection
// failed.
func (p *producer) session(ctx context.Context, addr string) error {
	l, err := p.cfg.dial(ctx, addr)
	if err != nil {
		return err
	}
	l.watch(ctx, p.cfg.StopGrace+time.Second)
	p.conn++
	p.h.Connect(p.cfg.ID, p.conn, addr)
	p.cfg.Logger.Debug().Str("addr", addr).Int("conn", p.conn).Msg("producer: connected")

	s := &pubSession{p: p, l: l, inflight: map[uint64]*outMsg{}}
	err = s.run(ctx)
	if err != nil {
		for _, tag := range s.tags() {
			p.h.PublishFailed(p.cfg.ID, p.conn, s.inflight[tag].id, err)
		}
		p.h.Disconnect(p.cfg.ID, p.conn, err)
	}
	l.close(time.Second)
	return err
}

// pubSession is the state of one producer connection.
type pubSession struct {
	p        *producer
	l        *link
	ch       *amqp.Channel
	inflight map[uint64]*outMsg // by publish sequence number
}

// errStopped is the PublishFailed reason of messages still unconfirmed when
// a producer stops.
var errStopped = errors.New("chaos: producer stopped before the confirm")

func (s *pubSession) run(ctx context.Context) error {
	p := s.p
	connClosed := s.l.conn.NotifyClose(make(chan *amqp.Error, 1))
	ch, err := s.l.conn.Channel()
	if err != nil {
		return err
	}
	s.ch = ch
	chClosed := ch.NotifyClose(make(chan *amqp.Error, 1))
	if err := ch.Confirm(false); err != nil {
		return err
	}
	// Room for every outstanding confirm, so the library never blocks
	// on this channel.
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, p.cfg.MaxInFlight+1))

	for _, m := range slices.Clone(p.unconfirmed) {
		if err := s.publish(ctx, m); err != nil {
			return err
		}
	}
	var tick <-chan time.Time
	if p.cfg.Rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / p.cfg.Rate))
		defer t.Stop()
		tick = t.C
	}
	for {
		if p.cfg.Rate == 0 {
			for s.canPublishNew() && ctx.Err() == nil {
				if err := s.publishNew(ctx); err != nil {
					return err
				}
			}
		}
		if p.done() {
			return nil
		}
		select {
		case <-ctx.Done():
			return s.stop(confirms, connClosed, chClosed)
		case <-tick:
			if s.canPublishNew() {
				if err := s.publishNew(ctx); err != nil {
					return err
				}
			}
		case c, ok := <-confirms:
			if !ok {
				return closeErr(connClosed, chClosed)
			}
			if err := s.confirmed(ctx, c, true); err != nil {
				return err
			}
		case e := <-connClosed:
			return orClosed(e)
		case e := <-chClosed:
			return orClosed(e)
		}
	}
}

func orClosed(e *amqp.Error) error {
	if e == nil {
		return amqp.ErrClosed
	}
	return e
}

func (s *pubSession) canPublishNew() bool {
	p := s.p
	return len(s.inflight) < p.cfg.MaxInFlight && (p.cfg.Count <= 0 || p.next <= uint64(p.cfg.Count))
}

func (s *pubSession) publishNew(ctx context.Context) error {
	p := s.p
	if ctx.Err() != nil {
		return nil //nolint:nilerr // ctx ending is how a producer stops, not a failure
	}
	m := &outMsg{id: MsgID{Producer: p.cfg.ID, Seq: p.next}}
	p.next++
	p.unconfirmed = append(p.unconfirmed, m)
	return s.publish(ctx, m)
}

// publish sends the next attempt of m. Once ctx is done it sends nothing.
func (s *pubSession) publish(ctx context.Context, m *outMsg) error {
	p := s.p
	if ctx.Err() != nil {
		return nil //nolint:nilerr // once ctx is done nothing is sent (see above), not a failure
	}
	m.attempt++
	tag := s.ch.GetNextPublishSeqNo()
	s.inflight[tag] = m
	p.h.Publish(p.cfg.ID, p.conn, m.id, m.attempt)
	// Decided: send it even if ctx ends now, so the attempt is real.
	return s.ch.PublishWithContext(context.WithoutCancel(ctx), p.cfg.Exchange, p.cfg.RoutingKey, false, false,
		message(m.id, m.attempt, p.cfg.BodySize))
}

// confirmed handles the broker's answer to one publish; a nack re-sends
// the message when resend is set.
func (s *pubSession) confirmed(ctx context.Context, c amqp.Confirmation, resend bool) error {
	p := s.p
	m := s.inflight[c.DeliveryTag]
	if m == nil {
		return fmt.Errorf("chaos: producer %s: confirm of unknown tag %d", p.cfg.ID, c.DeliveryTag)
	}
	delete(s.inflight, c.DeliveryTag)
	if !c.Ack {
		p.h.Nack(p.cfg.ID, p.conn, m.id)
		if resend {
			return s.publish(ctx, m)
		}
		return nil
	}
	p.h.Confirm(p.cfg.ID, p.conn, m.id)
	if i := slices.Index(p.unconfirmed, m); i >= 0 {
		p.unconfirmed = slices.Delete(p.unconfirmed, i, i+1)
	}
	return nil
}

// stop waits up to StopGrace for the outstanding confirms, then returns
// nil; messages still unconfirmed get PublishFailed.
func (s *pubSession) stop(confirms <-chan amqp.Confirmation, connClosed, chClosed <-chan *amqp.Error) error {
	p := s.p
	t := time.NewTimer(p.cfg.StopGrace)
	defer t.Stop()
	for len(s.inflight) > 0 {
		select {
		case c, ok := <-confirms:
			if !ok {
				return closeErr(connClosed, chClosed)
			}
			if err := s.confirmed(context.Background(), c, false); err != nil {
				return err
			}
		case e := <-connClosed:
			return orClosed(e)
		case e := <-chClosed:
			return orClosed(e)
		case <-t.C:
			for _, tag := range s.tags() {
				p.h.PublishFailed(p.cfg.ID, p.conn, s.inflight[tag].id, errStopped)
			}
			return nil
		}
	}
	return nil
}

// tags returns the in-flight publish sequence numbers in order.
func (s *pubSession) tags() []uint64 {
	tags := make([]uint64, 0, len(s.inflight))
	for t := range s.inflight {
		tags = append(tags, t)
	}
	slices.Sort(tags)
	return tags
}
