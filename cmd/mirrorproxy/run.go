package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/admin"
	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/config"
	"github.com/mirrorproxy/mirrorproxy/failover/group"
	"github.com/mirrorproxy/mirrorproxy/gm"
	"github.com/mirrorproxy/mirrorproxy/proxy"
	"github.com/mirrorproxy/mirrorproxy/replicate"
)

// flagKeys maps run's override flags to the config keys they set.
var flagKeys = []struct{ flag, key string }{
	{"listen", "listen.address"},
	{"upstream", "upstream.address"},
	{"log-level", "log.level"},
	{"log-format", "log.format"},
	{"admin", "admin.address"},
	{"tls-listen", "tls.listen"},
	{"tls-cert", "tls.cert"},
	{"tls-key", "tls.key"},
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "run a sidecar: accept AMQP clients and carry them to the broker",
		Description: "Settings come from the defaults, then the --config file, then the other flags.\n" +
			"SIGTERM or SIGINT shuts down gracefully (shutdown_grace); a second signal closes every session at once.\n" +
			"SIGHUP reloads the TLS certificates (open sessions keep theirs).",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, TakesFile: true, Usage: "config `FILE` (see config.example.yaml); without it, defaults and flags only"},
			&cli.StringFlag{Name: "listen", Usage: "listen.address: where clients connect, `HOST:PORT` (default " + config.DefaultListen + ")"},
			&cli.StringFlag{Name: "upstream", Usage: "upstream.address: the broker, `HOST:PORT` (default " + config.DefaultUpstream + ")"},
			&cli.StringFlag{Name: "log-level", Usage: "log.level: trace, debug, info, warn, error (default info)"},
			&cli.StringFlag{Name: "log-format", Usage: "log.format: json, console, auto (default auto: console on a terminal)"},
			&cli.StringFlag{Name: "admin", Usage: "admin.address: `HOST:PORT` of /metrics, /healthz, /readyz and the status page (and a group node's admin API), or off"},
			&cli.StringFlag{Name: "tls-listen", Usage: "tls.listen: an amqps listener for clients, `HOST:PORT` (docs/TLS.md)"},
			&cli.StringFlag{Name: "tls-cert", TakesFile: true, Usage: "tls.cert: the amqps listener's certificate, PEM `FILE` (reloaded on SIGHUP and when it changes)"},
			&cli.StringFlag{Name: "tls-key", TakesFile: true, Usage: "tls.key: its private key, PEM `FILE`"},
		},
		Action: runAction,
	}
}

// loadRunConfig builds run's configuration: defaults, the --config file,
// then the flags that were given. The error lists every problem.
func loadRunConfig(c *cli.Context) (*config.Config, error) {
	cfg := config.Default()
	if file := c.String("config"); file != "" {
		var err error
		if cfg, err = config.Load(file); cfg == nil {
			return nil, err
		}
	}
	for _, f := range flagKeys {
		if !c.IsSet(f.flag) {
			continue
		}
		if err := cfg.Set(f.key, c.String(f.flag), "--"+f.flag); err != nil {
			return nil, err
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func runAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return cli.Exit(fmt.Sprintf("run takes no arguments, got %q (the config file goes after --config)", c.Args().First()), 1)
	}
	// Catch signals from the start, so one that arrives while starting up
	// still shuts down in order.
	signals := make(chan os.Signal, 3)
	signal.Notify(signals, syscall.SIGTERM, os.Interrupt)
	defer signal.Stop(signals)

	cfg, err := loadRunConfig(c)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	log, err := newLogger(cfg.Log, c.App.ErrWriter, isTerminal(c.App.ErrWriter))
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	tr, err := startTLS(cfg, log)
	if err != nil {
		log.Error().Err(err).Msg("cannot load the TLS certificates")
		return cli.Exit("", 1)
	}
	defer tr.Close()
	ln, err := net.Listen("tcp", cfg.Listen.Address)
	if err != nil {
		log.Error().Err(err).Str("listen", cfg.Listen.Address).Msg("cannot listen")
		return cli.Exit("", 1)
	}
	tln, err := tr.listen()
	if err != nil {
		ln.Close()
		log.Error().Err(err).Str("listen", cfg.TLS.Listen).Msg("cannot listen for amqps")
		return cli.Exit("", 1)
	}
	if tln != nil {
		defer tln.Close() // on the error paths; Serve closes it otherwise
	}
	var srv server
	var adm *admin.Server
	if cfg.Grouped() {
		grp, policies, err := startGroup(cfg, tr.peerAuth(), log)
		if err != nil {
			ln.Close()
			log.Error().Err(err).Msg("cannot start the group node")
			return cli.Exit("", 1)
		}
		srv = grp
		if cfg.AdminEnabled() {
			if adm, err = startAdmin(cfg, grp, policies, log); err != nil {
				ln.Close()
				grp.Close()
				log.Error().Err(err).Str("listen", cfg.Admin.Address).Msg("cannot start the admin API")
				return cli.Exit("", 1)
			}
		}
	} else {
		opts := cfg.Options(log)
		opts.UpstreamTLS = tr.upstreamConfig()
		s, err := proxy.NewServer(opts)
		if err != nil {
			ln.Close()
			log.Error().Err(err).Msg("cannot start")
			return cli.Exit("", 1)
		}
		srv = s
		if cfg.AdminEnabled() {
			if adm, err = startPlainAdmin(cfg, s, log); err != nil {
				ln.Close()
				log.Error().Err(err).Str("listen", cfg.Admin.Address).Msg("cannot serve /metrics and the probes")
				return cli.Exit("", 1)
			}
		}
	}
	bi := readBuildInfo()
	ev := log.Info().Str("version", bi.Version) //nolint:zerologlint // sent with Msg below, after the optional fields
	if bi.Commit != "" {
		ev = ev.Str("commit", bi.Commit)
	}
	if cfg.File != "" {
		ev = ev.Str("config", cfg.File)
	}
	if cfg.Grouped() {
		ev = ev.Str("node", cfg.Node.Name).Int("peers", len(cfg.Peers))
	}
	ev.Str("listen", ln.Addr().String()).Str("upstream", cfg.Upstream.Address).
		Str("proxy_protocol", cfg.ProxyProtocol.Mode).Msg("mirrorproxy starting")
	checkUpstream(log, cfg.Upstream.Address)
	if tln != nil {
		err = serve(log, withTLS(srv, tln, tr.serverConfig()), ln, cfg.ShutdownGrace, signals)
	} else {
		err = serve(log, srv, ln, cfg.ShutdownGrace, signals)
	}
	if adm != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if aerr := adm.Close(ctx); aerr != nil {
			log.Warn().Err(aerr).Msg("closing the admin API")
		}
		cancel()
	}
	if g, ok := srv.(*group.Group); ok {
		// serve stopped the clients; the ring, raft and mirror stop here.
		if cerr := g.Close(); cerr != nil {
			log.Warn().Err(cerr).Msg("closing the group node")
		}
	}
	if err != nil {
		return cli.Exit("", 1) // serve logged why
	}
	return nil
}

// startGroup starts this sidecar's node of its group (config node, peers,
// gm, raft, broker, policies): it listens on its own peer entry's gm and
// raft addresses.
func startGroup(cfg *config.Config, auth gm.AuthConfig, log zerolog.Logger) (*group.Group, *replicate.Policies, error) {
	policies, err := cfg.PolicySet()
	if err != nil {
		return nil, nil, err
	}
	if cfg.Raft.DataDir == "" {
		log.Warn().Msg("raft.data_dir is empty: the view's raft state is in memory, so this node restarts as a new voter and a group restarted whole loses its view; set it in production")
	}
	var peers []group.Peer
	var self config.Peer
	for _, p := range cfg.Peers {
		peers = append(peers, group.Peer{ID: p.Name, ClientAddr: p.ClientAddress, GMAddr: p.GMAddress, RaftAddr: p.RaftAddress})
		if p.Name == cfg.Node.Name {
			self = p
		}
	}
	gl, err := net.Listen("tcp", self.GMAddress)
	if err != nil {
		return nil, nil, fmt.Errorf("gm listener: %w", err)
	}
	rl, err := net.Listen("tcp", self.RaftAddress)
	if err != nil {
		gl.Close()
		return nil, nil, fmt.Errorf("raft listener: %w", err)
	}
	g, err := group.Start(group.Config{
		Self: cfg.Node.Name, Peers: peers, GMListener: gl, RaftListener: rl,
		Auth:      auth,
		BrokerURL: cfg.BrokerURL(), Policies: policies, Proxy: cfg.Options(log),
		Ring:              gm.Config{Window: int(cfg.GM.Window)},
		HeartbeatInterval: cfg.GM.HeartbeatInterval,
		FailureTimeout:    cfg.Raft.FailureTimeout, LeaseDuration: cfg.Raft.LeaseDuration,
		DataDir: cfg.Raft.DataDir, MoveSessions: cfg.Raft.MoveSessions, Logger: log,
	})
	return g, policies, err
}

// server is what serve drives: *proxy.Server, or a fake in tests.
type server interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
	Close() error
}

// errForced is serve's result when a second signal cut the shutdown short.
var errForced = errors.New("shutdown forced by a second signal")

// serve runs srv on ln until Serve fails or a signal arrives, then shuts it
// down: Shutdown with grace as the bound; a second signal calls Close; a
// third returns at once without waiting. It returns nil after a clean
// shutdown (sessions still open when the grace ran out are closed with 320
// by the server: that is the configured behaviour, not a failure), and an
// error, already logged, otherwise. It waits for the goroutines it starts,
// except after a third signal, when the process is about to exit.
func serve(log zerolog.Logger, srv server, ln net.Listener, grace time.Duration, signals <-chan os.Signal) error {
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	select {
	case err := <-served:
		log.Error().Err(err).Msg("server stopped unexpectedly")
		if cerr := srv.Close(); cerr != nil && !errors.Is(cerr, proxy.ErrServerClosed) {
			log.Warn().Err(cerr).Msg("closing the server")
		}
		return fmt.Errorf("serving: %w", err)
	case sig := <-signals:
		log.Info().Str("signal", sig.String()).Str("grace", grace.String()).
			Msg("shutting down: not accepting; open sessions may finish within the grace period")
	}

	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()

	var result error
	forced := false
	for shut != nil || served != nil {
		select {
		case err := <-shut:
			shut = nil
			switch {
			case err == nil:
			case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
				if !forced {
					log.Warn().Str("grace", grace.String()).Msg("grace period over: remaining sessions closed with 320 CONNECTION_FORCED")
				}
			default:
				log.Error().Err(err).Msg("shutdown failed")
				result = fmt.Errorf("shutdown: %w", err)
			}
		case err := <-served:
			served = nil
			if !errors.Is(err, proxy.ErrServerClosed) {
				log.Error().Err(err).Msg("server failed while shutting down")
				result = fmt.Errorf("serving: %w", err)
			}
		case sig := <-signals:
			if forced {
				log.Error().Str("signal", sig.String()).Msg("third signal: exiting without waiting for the server")
				return errForced
			}
			forced = true
			log.Warn().Str("signal", sig.String()).Msg("second signal: closing every session now")
			cancel()
			if err := srv.Close(); err != nil && !errors.Is(err, proxy.ErrServerClosed) {
				log.Warn().Err(err).Msg("closing the server")
			}
		}
	}
	switch {
	case result != nil:
		return result
	case forced:
		log.Warn().Msg("stopped (forced)")
		return errForced
	}
	log.Info().Msg("stopped")
	return nil
}
