package main

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/certs"
	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/config"
	"github.com/mirrorproxy/mirrorproxy/gm"
	"github.com/mirrorproxy/mirrorproxy/proxy"
)

// tlsRuntime is run's TLS: the certificate stores of the amqps listener
// (tls), the broker connections (upstream.tls) and the peer links
// (gm.tls), each reloaded on SIGHUP and when its files change. A section
// that is off has a nil store.
type tlsRuntime struct {
	cfg                    *config.Config
	log                    zerolog.Logger
	client, upstream, peer *certs.Store

	hup    chan os.Signal
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startTLS loads every configured certificate and starts the reloads. It
// catches SIGHUP even when no TLS is configured, so that the signal (sent
// by habit to reload a daemon) never kills the sidecar.
func startTLS(cfg *config.Config, log zerolog.Logger) (*tlsRuntime, error) {
	r := &tlsRuntime{cfg: cfg, log: log}
	var err error
	if cfg.TLSEnabled() {
		if r.client, err = certs.NewStore("tls", cfg.TLSFiles(), log); err != nil {
			return nil, err
		}
	}
	if cfg.Upstream.TLS.Enabled {
		if r.upstream, err = certs.NewStore("upstream.tls", cfg.UpstreamTLSFiles(), log); err != nil {
			return nil, err
		}
	}
	if cfg.GM.TLS.Set() {
		if r.peer, err = certs.NewStore("gm.tls", cfg.PeerTLSFiles(), log); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.hup = make(chan os.Signal, 1)
	signal.Notify(r.hup, syscall.SIGHUP)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-r.hup:
				r.reload("SIGHUP")
			}
		}
	}()
	for _, s := range r.stores() {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			s.Watch(ctx, cfg.TLS.ReloadInterval)
		}()
	}
	return r, nil
}

func (r *tlsRuntime) stores() []*certs.Store {
	var out []*certs.Store
	for _, s := range []*certs.Store{r.client, r.upstream, r.peer} {
		if s != nil {
			out = append(out, s)
		}
	}
	return out
}

// reload reloads every store; each logs its outcome.
func (r *tlsRuntime) reload(why string) {
	stores := r.stores()
	if len(stores) == 0 {
		r.log.Info().Str("signal", why).Msg("no TLS certificates configured: nothing to reload")
		return
	}
	for _, s := range stores {
		_ = s.Reload(why)
	}
}

// Close stops the reloads and waits for them.
func (r *tlsRuntime) Close() {
	signal.Stop(r.hup)
	r.cancel()
	r.wg.Wait()
}

// listen opens the amqps listener, or returns nil when there is none.
func (r *tlsRuntime) listen() (net.Listener, error) {
	if r.client == nil {
		return nil, nil
	}
	return net.Listen("tcp", r.cfg.TLS.Listen)
}

// serverConfig is the amqps listener's tls.Config.
func (r *tlsRuntime) serverConfig() *tls.Config {
	return r.client.ServerConfig(r.cfg.TLSClientAuth())
}

// upstreamConfig is the broker connections' tls.Config, nil when they
// are plain.
func (r *tlsRuntime) upstreamConfig() *tls.Config {
	if r.upstream == nil {
		return nil
	}
	name := r.cfg.Upstream.TLS.ServerName
	if name == "" {
		name, _, _ = net.SplitHostPort(r.cfg.Upstream.Address)
	}
	return certs.UpstreamConfig(r.upstream, name)
}

// peerAuth is how this node and its peers prove themselves: gm.secret,
// mutual TLS (gm.tls), or both.
func (r *tlsRuntime) peerAuth() gm.AuthConfig {
	var a gm.AuthConfig
	if r.cfg.GM.Secret != "" {
		a.Secret = []byte(r.cfg.GM.Secret)
	}
	if r.peer != nil {
		a.TLS = r.peer.PeerConfig()
	}
	return a
}

// tlsServer is a server that also serves amqps listeners.
type tlsServer interface {
	server
	ServeTLS(net.Listener, *tls.Config) error
}

// withTLS returns srv serving tln with cfg beside the listener its Serve is
// given, or srv itself when tln is nil.
func withTLS(srv server, tln net.Listener, cfg *tls.Config) server {
	ts, ok := srv.(tlsServer)
	if tln == nil || !ok {
		return srv
	}
	return bothListeners{tlsServer: ts, tln: tln, cfg: cfg}
}

// bothListeners serves the plain and the amqps listener of one server. Its
// Serve returns when both have stopped: with the first one's error (after
// closing the server, when that error is not the end of a shutdown, so
// that the other stops too).
type bothListeners struct {
	tlsServer
	tln net.Listener
	cfg *tls.Config
}

func (b bothListeners) Serve(ln net.Listener) error {
	errs := make(chan error, 2)
	go func() { errs <- b.tlsServer.Serve(ln) }()
	go func() { errs <- b.ServeTLS(b.tln, b.cfg) }()
	first := <-errs
	if !errors.Is(first, proxy.ErrServerClosed) {
		_ = b.Close()
	}
	<-errs //nolint:errcheck // the first listener's error is the one returned; this waits for the other
	return first
}
