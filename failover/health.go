package failover

import (
	"context"
	"errors"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
)

// HealthConfig configures a broker probe.
type HealthConfig struct {
	// URL is the local broker with the sidecar's own credentials.
	URL string
	// Interval between probes (default 250ms).
	Interval time.Duration
	// Timeout bounds one probe's round trip (default 1s).
	Timeout time.Duration
	// FrozenAfter: a broker that answered no probe for this long (sockets
	// open, nothing answers) is frozen (default 3s). A refused or broken
	// connection is down at once. A loaded machine can make one probe
	// slow; only a broker silent for FrozenAfter counts.
	FrozenAfter time.Duration
	Logger      zerolog.Logger
}

// BrokerProbe watches the local broker (DESIGN §7): it keeps one AMQP
// connection and channel to it and, every Interval, makes a round trip that
// costs the broker nothing (a passive declare of amq.direct). A connection
// refused, reset or closed is BrokerDown at once; a round trip with no
// answer for FrozenAfter (sockets open, nothing answers: a frozen broker)
// is BrokerFrozen. Verdicts go to OnChange when they change, from the probe's
// goroutine. An AMQP connection, rather than a TCP probe, keeps the
// broker's log free of a line per probe.
type BrokerProbe struct {
	cfg      HealthConfig
	onChange func(BrokerHealth)
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	mu   sync.Mutex
	last BrokerHealth

	lastOK time.Time // the probe goroutine's: the last answered probe (or the start)
}

// StartBrokerProbe starts probing; Close stops it.
func StartBrokerProbe(cfg HealthConfig, onChange func(BrokerHealth)) *BrokerProbe {
	if cfg.Interval <= 0 {
		cfg.Interval = 250 * time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Second
	}
	if cfg.FrozenAfter <= 0 {
		cfg.FrozenAfter = 3 * time.Second
	}
	p := &BrokerProbe{cfg: cfg, onChange: onChange}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.run()
	}()
	return p
}

// Health is the latest verdict.
func (p *BrokerProbe) Health() BrokerHealth {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// Close stops the probe and waits for it.
func (p *BrokerProbe) Close() {
	p.cancel()
	p.wg.Wait()
}

func (p *BrokerProbe) report(h BrokerHealth, err error) {
	if p.ctx.Err() != nil {
		return // closing: no verdict
	}
	p.mu.Lock()
	changed := h != p.last
	p.last = h
	p.mu.Unlock()
	if !changed {
		return
	}
	ev := p.cfg.Logger.Info() //nolint:zerologlint // sent with Msg below
	if h != BrokerOK {
		ev = p.cfg.Logger.Warn().Err(err) //nolint:zerologlint // sent with Msg below
	}
	ev.Stringer("broker", h).Msg("local broker health changed")
	if p.onChange != nil {
		p.onChange(h)
	}
}

func (p *BrokerProbe) run() {
	p.lastOK = time.Now()
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	var conn *amqp091.Connection
	var ch *amqp091.Channel
	defer func() {
		if conn != nil {
			_ = conn.CloseDeadline(time.Now().Add(p.cfg.Timeout)) // a probe connection; its close error tells nothing
		}
	}()
	for {
		if conn == nil || conn.IsClosed() {
			c, err := p.dial()
			if err != nil {
				p.failed(nil, err)
			} else {
				conn = c
				ch = nil
			}
		}
		if conn != nil && ch == nil {
			cn := conn // the call may outlive this round: it gets its own copy
			if c, err := p.call(func() (any, error) { return cn.Channel() }); err == nil {
				ch = c.(*amqp091.Channel)
			} else {
				p.failed(conn, err)
				conn = nil
			}
		}
		if ch != nil {
			c := ch
			_, err := p.call(func() (any, error) {
				return nil, c.ExchangeDeclarePassive("amq.direct", "direct", true, false, false, false, nil)
			})
			if err == nil {
				p.lastOK = time.Now()
				p.report(BrokerOK, nil)
			} else {
				p.failed(conn, err)
				conn, ch = nil, nil
			}
		}
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// failed reports a probe's error and drops the connection: the next round
// dials afresh (a frozen broker answers no dial either).
func (p *BrokerProbe) failed(conn *amqp091.Connection, err error) {
	switch {
	case !errors.Is(err, errProbeTimeout):
		p.report(BrokerDown, err)
	case time.Since(p.lastOK) >= p.cfg.FrozenAfter:
		p.report(BrokerFrozen, err)
	}
	if conn != nil {
		// In its own goroutine: a frozen broker never answers the close.
		// A probe connection; its close error tells nothing.
		go func() { _ = conn.CloseDeadline(time.Now().Add(p.cfg.Timeout)) }()
	}
}

var errProbeTimeout = errors.New("failover: the broker did not answer the probe in time")

func (p *BrokerProbe) dial() (*amqp091.Connection, error) {
	c, err := p.call(func() (any, error) {
		return amqp091.DialConfig(p.cfg.URL, amqp091.Config{Heartbeat: 0, Dial: amqp091.DefaultDial(p.cfg.Timeout),
			Properties: amqp091.Table{"connection_name": "mirrorproxy health probe"}})
	})
	if err != nil {
		return nil, err
	}
	return c.(*amqp091.Connection), nil
}

// call runs fn with the probe's timeout. A call that times out is left to
// finish on its own goroutine (amqp091 calls take no context); it ends when
// its connection is closed.
func (p *BrokerProbe) call(fn func() (any, error)) (any, error) {
	type result struct {
		v   any
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := fn()
		done <- result{v, err}
	}()
	t := time.NewTimer(p.cfg.Timeout)
	defer t.Stop()
	select {
	case r := <-done:
		return r.v, r.err
	case <-t.C:
	case <-p.ctx.Done():
	}
	go func() {
		// A connection that arrives late is not used: close it.
		if r := <-done; r.err == nil {
			if c, ok := r.v.(*amqp091.Connection); ok {
				_ = c.CloseDeadline(time.Now().Add(p.cfg.Timeout)) // unused; its close error tells nothing
			}
		}
	}()
	if err := p.ctx.Err(); err != nil {
		return nil, err
	}
	return nil, errProbeTimeout
}
