package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/proxy"
)

// target is one running way to reach the broker.
type target struct {
	spec  TargetSpec
	addr  string // what clients dial
	url   string // the broker URL with addr as its host
	close func() error
	// adminURL is where the bench declares, pre-fills, inspects and deletes
	// the target's queues and publishes the ping-pong messages: the broker
	// for the single-broker targets, the master sidecar for mirrored (so
	// the mirrors see it all), node 0 for the RabbitMQ cluster targets.
	adminURL string
	// queueType is the bench queue's x-queue-type.
	queueType string
}

// shared holds what several targets use and the run stops at its end: the
// RabbitMQ cluster behind rmq-mirrored and rmq-quorum.
type shared struct {
	rmq *rmqCluster
}

func (sh *shared) cluster(ctx context.Context, log zerolog.Logger) (*rmqCluster, error) {
	if sh.rmq == nil {
		c, err := startRMQCluster(ctx, log)
		if err != nil {
			return nil, err
		}
		sh.rmq = c
	}
	return sh.rmq, nil
}

func (sh *shared) Close() error {
	if sh.rmq == nil {
		return nil
	}
	return sh.rmq.Close()
}

// probeTimeout bounds the first AMQP connection through a freshly started
// target.
const probeTimeout = 10 * time.Second

// startTarget starts (or, for direct and external targets, only names) the
// target and checks that an AMQP connection through it opens.
func startTarget(ctx context.Context, spec TargetSpec, brokerURL, brokerAddr string, sh *shared, log zerolog.Logger) (*target, error) {
	t := &target{spec: spec, close: func() error { return nil }, adminURL: brokerURL, queueType: "classic"}
	switch {
	case spec.Name == TargetMirrored && spec.Addr == "":
		mg, err := startMirroredGroup(ctx, log)
		if err != nil {
			return nil, fmt.Errorf("bench: target %q: %w", spec.Name, err)
		}
		t.addr, t.url, t.adminURL, t.close = mg.addr, mg.url, mg.url, mg.Close
		if err := probe(ctx, t.url); err != nil {
			return nil, errors.Join(fmt.Errorf("bench: target %q (%s) does not work: %w", spec.Name, t.addr, err), t.close())
		}
		return t, nil
	case (spec.Name == TargetRMQMirrored || spec.Name == TargetRMQQuorum) && spec.Addr == "":
		c, err := sh.cluster(ctx, log)
		if err != nil {
			return nil, fmt.Errorf("bench: target %q: %w", spec.Name, err)
		}
		t.url, t.adminURL = c.url, c.url
		if t.addr, err = brokerHostPort(c.url); err != nil {
			return nil, err
		}
		if spec.Name == TargetRMQQuorum {
			t.queueType = "quorum"
		}
		if err := probe(ctx, t.url); err != nil {
			return nil, fmt.Errorf("bench: target %q (%s) does not work: %w", spec.Name, t.addr, err)
		}
		return t, nil
	case spec.Addr != "":
		t.addr = spec.Addr
	case spec.Name == TargetDirect:
		t.addr = brokerAddr
	case spec.Name == TargetHop, spec.Name == TargetHopBuf:
		h, err := StartHop(brokerAddr, spec.Name == TargetHopBuf, log)
		if err != nil {
			return nil, err
		}
		t.addr, t.close = h.Addr(), h.Close
	case spec.Name == TargetProxy:
		p, err := startProxy(ctx, brokerAddr, brokerURL)
		if err != nil {
			return nil, fmt.Errorf("bench: target %q does not work (leave it out with --targets): %w", spec.Name, err)
		}
		t.addr, t.close = p.addr, p.Close
		// startProxy probed it already.
		t.url, _ = urlVia(brokerURL, t.addr)
		return t, nil
	default:
		return nil, fmt.Errorf("bench: unknown target %q", spec.Name)
	}
	var err error
	if t.url, err = urlVia(brokerURL, t.addr); err != nil {
		_ = t.close()
		return nil, err
	}
	if err := probe(ctx, t.url); err != nil {
		_ = t.close()
		return nil, fmt.Errorf("bench: target %q (%s) does not work: %w", spec.Name, t.addr, err)
	}
	return t, nil
}

// probe opens and closes one AMQP connection to url.
func probe(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	conn, err := dial(ctx, url, "probe")
	if err != nil {
		return err
	}
	return conn.Close()
}

// dial opens an AMQP connection; ctx bounds the connection handshake.
func dial(ctx context.Context, url, name string) (*amqp.Connection, error) {
	timeout := probeTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	if timeout <= 0 {
		return nil, fmt.Errorf("dial %s: %w", name, context.DeadlineExceeded)
	}
	cfg := amqp.Config{
		Dial:       amqp.DefaultDial(timeout),
		Heartbeat:  60 * time.Second, // tolerant of a starved box; RunTimeout catches a dead peer
		Properties: amqp.NewConnectionProperties(),
	}
	cfg.Properties.SetClientConnectionName("mirrorproxy-bench " + name)
	conn, err := amqp.DialConfig(url, cfg)
	if err != nil {
		return nil, fmt.Errorf("open AMQP connection (%s): %w", name, err)
	}
	return conn, nil
}

// runningProxy is the product's proxy.Server served in this process.
type runningProxy struct {
	srv    *proxy.Server
	ln     net.Listener
	addr   string
	served chan error // receives Serve's result once
}

// proxyStopTimeout bounds Shutdown and the wait for Serve to return.
const proxyStopTimeout = 10 * time.Second

// startProxy serves proxy.Server on 127.0.0.1:0 and opens one AMQP
// connection through it. If Serve returns early (the server is not finished,
// or fails), the error says so.
func startProxy(ctx context.Context, brokerAddr, brokerURL string) (*runningProxy, error) {
	srv, err := proxy.NewServer(proxy.Options{Upstream: brokerAddr, Logger: zerolog.Nop()})
	if err != nil {
		return nil, fmt.Errorf("proxy.NewServer: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the proxy: %w", err)
	}
	p := &runningProxy{srv: srv, ln: ln, addr: ln.Addr().String(), served: make(chan error, 1)}
	go func() { p.served <- srv.Serve(ln) }()

	url, err := urlVia(brokerURL, p.addr)
	if err != nil {
		_ = p.Close()
		return nil, err
	}
	probed := make(chan error, 1)
	pctx, cancel := context.WithCancel(ctx)
	go func() { probed <- probe(pctx, url) }()
	select {
	case err := <-probed:
		cancel()
		if err != nil {
			_ = p.Close()
			return nil, fmt.Errorf("AMQP connection through the proxy failed: %w", err)
		}
		return p, nil
	case serveErr := <-p.served:
		// Serve gave up; closing the listener resets the probe's pending
		// connection so the probe ends quickly.
		p.served <- serveErr
		cancel()
		_ = ln.Close()
		<-probed //nolint:errcheck // the probe fails now; Serve's error is the one reported
		_ = p.Close()
		return nil, fmt.Errorf("proxy.Server.Serve returned at once: %w", serveErr)
	}
}

// Close shuts the proxy down and waits for Serve to return.
func (p *runningProxy) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), proxyStopTimeout)
	defer cancel()
	var errs []error
	if err := p.srv.Shutdown(ctx); err != nil && !errors.Is(err, proxy.ErrServerClosed) {
		errs = append(errs, fmt.Errorf("proxy shutdown: %w", err))
		if err := p.srv.Close(); err != nil && !errors.Is(err, proxy.ErrServerClosed) {
			errs = append(errs, fmt.Errorf("proxy close: %w", err))
		}
	}
	if err := p.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		errs = append(errs, fmt.Errorf("proxy listener close: %w", err))
	}
	select {
	case err := <-p.served:
		if err != nil && !errors.Is(err, proxy.ErrServerClosed) && len(errs) == 0 {
			errs = append(errs, fmt.Errorf("proxy serve: %w", err))
		}
	case <-ctx.Done():
		errs = append(errs, errors.New("proxy: Serve did not return after Shutdown and Close"))
	}
	return errors.Join(errs...)
}
