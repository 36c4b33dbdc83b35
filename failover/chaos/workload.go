package chaos

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
)

// Defaults for zero fields of ClientConfig, ProducerConfig and
// ConsumerConfig.
const (
	DefaultBackoff        = 200 * time.Millisecond
	DefaultHeartbeat      = 2 * time.Second
	DefaultDialTimeout    = 3 * time.Second
	DefaultStopGrace      = 2 * time.Second
	DefaultMaxInFlight    = 64
	DefaultBodySize       = 64
	DefaultPrefetch       = 16
	DefaultSettleInterval = 100 * time.Millisecond
)

// headerAttempt is the message header that carries the publish attempt,
// for people reading a queue; the checker does not need it.
const headerAttempt = "chaos-attempt"

// ErrConfig is wrapped by the errors a client returns for a bad config.
var ErrConfig = errors.New("chaos: bad config")

// ClientConfig is what producers and consumers share.
type ClientConfig struct {
	// ID names the client in the history; producers' ids also start
	// their messages' ids. Unique in a run.
	ID string
	// Addrs are the addresses to connect to, tried in turn, starting with
	// Addrs[Start % len]: AMQP URLs, or host:port (then guest:guest on
	// vhost "/"). Give every sidecar's.
	Addrs []string
	// Start is the index in Addrs of the first address tried, so clients
	// can spread over the sidecars.
	Start int
	// Backoff is the pause before connecting again after an error.
	Backoff time.Duration
	// Heartbeat is the AMQP heartbeat asked for; a silent server is given
	// up after about three of them.
	Heartbeat time.Duration
	// DialTimeout bounds the TCP connect and the AMQP handshake.
	DialTimeout time.Duration
	// StopGrace is how long a client stopping (its context done) waits
	// for outstanding confirms or a last settle before it closes.
	StopGrace time.Duration
	// Dial opens the TCP connection; nil means net.Dialer. A test can
	// wrap it to break connections (see the workload test).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger gets debug lines on connects and errors; the zero value
	// logs nothing.
	Logger zerolog.Logger
}

func (c *ClientConfig) withDefaults() error {
	if c.ID == "" {
		return fmt.Errorf("%w: empty client ID", ErrConfig)
	}
	if len(c.Addrs) == 0 {
		return fmt.Errorf("%w: client %s: no Addrs", ErrConfig, c.ID)
	}
	if c.Start < 0 {
		return fmt.Errorf("%w: client %s: negative Start", ErrConfig, c.ID)
	}
	if c.Backoff <= 0 {
		c.Backoff = DefaultBackoff
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.StopGrace <= 0 {
		c.StopGrace = DefaultStopGrace
	}
	if c.Dial == nil {
		d := &net.Dialer{}
		c.Dial = d.DialContext
	}
	c.Logger = c.Logger.With().Str("client", c.ID).Logger()
	return nil
}

// addr returns the i-th address to try.
func (c *ClientConfig) addr(i int) string { return c.Addrs[(c.Start+i)%len(c.Addrs)] }

// amqpURL turns host:port into a URL with the default credentials.
func amqpURL(addr string) string {
	if strings.Contains(addr, "://") {
		return addr
	}
	return "amqp://guest:guest@" + addr + "/"
}

// link is one AMQP connection with the raw TCP connection under it, which
// a watchdog can close to free a goroutine blocked in a write.
type link struct {
	conn *amqp.Connection
	raw  net.Conn
	stop chan struct{}
	wg   sync.WaitGroup
}

// dial connects to addr. The TCP connect is bounded by ctx and
// DialTimeout, the AMQP handshake by DialTimeout.
func (c *ClientConfig) dial(ctx context.Context, addr string) (*link, error) {
	l := &link{stop: make(chan struct{})}
	cfg := amqp.Config{
		Heartbeat: c.Heartbeat,
		Dial: func(network, a string) (net.Conn, error) {
			dctx, cancel := context.WithTimeout(ctx, c.DialTimeout)
			defer cancel()
			raw, err := c.Dial(dctx, network, a)
			if err != nil {
				return nil, err
			}
			// amqp091 clears the deadline once the connection is open.
			if err := raw.SetDeadline(time.Now().Add(c.DialTimeout)); err != nil {
				raw.Close()
				return nil, err
			}
			l.raw = raw // DialConfig calls Dial in this goroutine
			return raw, nil
		},
		Properties: amqp.Table{"connection_name": c.ID},
	}
	conn, err := amqp.DialConfig(amqpURL(addr), cfg)
	if err != nil {
		return nil, err
	}
	l.conn = conn
	if l.raw == nil { // cannot happen: DialConfig dialled through cfg.Dial
		conn.Close()
		return nil, errors.New("chaos: no raw connection")
	}
	return l, nil
}

// watch closes the raw connection once ctx is done and grace has passed,
// unless the link is closed first. It frees a client stuck in a write to a
// frozen server when the run stops.
func (l *link) watch(ctx context.Context, grace time.Duration) {
	l.wg.Go(func() {
		select {
		case <-l.stop:
			return
		case <-ctx.Done():
		}
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-l.stop:
		case <-t.C:
			l.raw.Close()
		}
	})
}

// close closes the connection (politely, bounded by d) and its watchdog.
func (l *link) close(d time.Duration) {
	if err := l.conn.CloseDeadline(time.Now().Add(d)); err != nil {
		l.raw.Close()
	}
	close(l.stop)
	l.wg.Wait()
}

// closeErr returns the error a closed connection or channel reported, or
// amqp.ErrClosed if none comes within a short wait.
func closeErr(connClosed, chClosed <-chan *amqp.Error) error {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case e, ok := <-chClosed:
		if ok && e != nil {
			return e
		}
	case e, ok := <-connClosed:
		if ok && e != nil {
			return e
		}
	case <-t.C:
	}
	return amqp.ErrClosed
}

// sleep waits d or until ctx is done; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// message makes the publishing of try attempt of id: persistent, the id
// in MessageId and at the start of the body, padded to size bytes.
func message(id MsgID, attempt, size int) amqp.Publishing {
	body := []byte(id.String() + " attempt=" + strconv.Itoa(attempt) + " ")
	for len(body) < size {
		body = append(body, 'x')
	}
	return amqp.Publishing{
		DeliveryMode: amqp.Persistent,
		MessageId:    id.String(),
		Headers:      amqp.Table{headerAttempt: int32(attempt)},
		ContentType:  "text/plain",
		Body:         body,
	}
}

// messageID finds the id of a delivered message: its MessageId, else the
// first word of its body. raw is what was found, for reports.
func messageID(messageID string, body []byte) (id MsgID, raw string) {
	raw = messageID
	if raw == "" {
		raw = string(body)
		if i := strings.IndexByte(raw, ' '); i >= 0 {
			raw = raw[:i]
		}
		if len(raw) > 64 {
			raw = raw[:64]
		}
	}
	id, err := ParseMsgID(raw)
	if err != nil {
		return MsgID{}, raw
	}
	return id, raw
}

// Workload runs producers and consumers into one History.
type Workload struct {
	History   *History
	Producers []ProducerConfig
	Consumers []ConsumerConfig
}

// Running is a started Workload. Its methods may be called from any
// goroutine.
type Running struct {
	stopProducers, stopConsumers context.CancelFunc
	producers, consumers         sync.WaitGroup
}

// Start checks every config and starts every client; they run until ctx is
// done or Stop. The caller must call Stop.
func (w Workload) Start(ctx context.Context) (*Running, error) {
	if w.History == nil {
		return nil, fmt.Errorf("%w: no History", ErrConfig)
	}
	ids := map[string]bool{}
	ps := make([]*producer, 0, len(w.Producers))
	for _, cfg := range w.Producers {
		p, err := newProducer(w.History, cfg)
		if err != nil {
			return nil, err
		}
		if ids[p.cfg.ID] {
			return nil, fmt.Errorf("%w: client id %s used twice", ErrConfig, p.cfg.ID)
		}
		ids[p.cfg.ID] = true
		ps = append(ps, p)
	}
	cs := make([]*consumer, 0, len(w.Consumers))
	for _, cfg := range w.Consumers {
		c, err := newConsumer(w.History, cfg)
		if err != nil {
			return nil, err
		}
		if ids[c.cfg.ID] {
			return nil, fmt.Errorf("%w: client id %s used twice", ErrConfig, c.cfg.ID)
		}
		ids[c.cfg.ID] = true
		cs = append(cs, c)
	}
	r := &Running{}
	pctx, stopP := context.WithCancel(ctx)
	cctx, stopC := context.WithCancel(ctx)
	r.stopProducers, r.stopConsumers = stopP, stopC
	for _, c := range cs {
		r.consumers.Go(func() { c.run(cctx) })
	}
	for _, p := range ps {
		r.producers.Go(func() { p.run(pctx) })
	}
	return r, nil
}

// StopProducers stops the producers and waits for them: each waits up to
// its StopGrace for outstanding confirms. Consumers keep consuming.
func (r *Running) StopProducers() {
	r.stopProducers()
	r.producers.Wait()
}

// Stop stops every client and waits for them.
func (r *Running) Stop() {
	r.StopProducers()
	r.stopConsumers()
	r.consumers.Wait()
}

// DeclareQueue declares a durable queue with args through addr (any
// sidecar: the declaration is replicated), for a run to use.
func DeclareQueue(ctx context.Context, addr, queue string, args amqp.Table) error {
	return withChannel(ctx, addr, func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare(queue, true, false, false, false, args)
		return err
	})
}

// withChannel runs f on a fresh channel to addr, then closes the
// connection. ctx being done closes it under f.
func withChannel(ctx context.Context, addr string, f func(*amqp.Channel) error) error {
	cfg := ClientConfig{ID: "chaos-setup", Addrs: []string{addr}, StopGrace: time.Millisecond}
	if err := cfg.withDefaults(); err != nil {
		return err
	}
	l, err := cfg.dial(ctx, addr)
	if err != nil {
		return err
	}
	l.watch(ctx, cfg.StopGrace)
	defer l.close(time.Second)
	ch, err := l.conn.Channel()
	if err != nil {
		return err
	}
	if err := f(ch); err != nil {
		if ctx.Err() != nil {
			return errors.Join(ctx.Err(), err)
		}
		return err
	}
	return ctx.Err()
}
