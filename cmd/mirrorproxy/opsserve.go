package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/admin"
	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/config"
	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/ops"
	"github.com/mirrorproxy/mirrorproxy/failover/group"
	"github.com/mirrorproxy/mirrorproxy/proxy"
)

// withOps puts the operator endpoints (/metrics, /healthz, /readyz, the
// status page; cmd/mirrorproxy/ops) in front of a group node's admin API.
func withOps(cfg *config.Config, g *group.Group, api http.Handler, log zerolog.Logger) http.Handler {
	counter := brokerMessages{url: cfg.BrokerURL(), isMaster: g.IsMaster}
	return ops.NewHandler(ops.Config{Group: g, Messages: counter.countAll, Version: readBuildInfo().Version,
		Logger: log.With().Str("part", "ops").Logger()}, api)
}

// startPlainAdmin serves the operator endpoints of a plain sidecar (no
// group, so no admin API) on admin.address, when the config or --admin
// sets it.
func startPlainAdmin(cfg *config.Config, srv *proxy.Server, log zerolog.Logger) (*admin.Server, error) {
	log = log.With().Str("part", "admin").Logger()
	h := ops.NewHandler(ops.Config{Front: srv, Upstream: cfg.Upstream.Address, Version: readBuildInfo().Version,
		Logger: log.With().Str("part", "ops").Logger()}, nil)
	ln, err := net.Listen("tcp", cfg.Admin.Address)
	if err != nil {
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	log.Info().Str("listen", ln.Addr().String()).Msg("serving /metrics, /healthz, /readyz and the status page")
	return admin.Start(ln, h, log), nil
}

// countAll counts the ready messages of queues on the local broker, over
// one connection and channel for all of them (a scrape asks for every
// mirrored queue at once). A queue whose declare fails (deleted since) is
// left out; the channel is opened again for the next.
func (b brokerMessages) countAll(ctx context.Context, queues []ops.QueueRef) map[ops.QueueRef]int {
	out := map[ops.QueueRef]int{}
	if b.isMaster != nil && !b.isMaster() {
		return out
	}
	byVhost := map[string][]string{}
	for _, q := range queues {
		byVhost[q.Vhost] = append(byVhost[q.Vhost], q.Name)
	}
	for vhost, names := range byVhost {
		conn, err := dialVhost(ctx, b.url, vhost, "mirrorproxy metrics", 5*time.Second)
		if err != nil {
			continue
		}
		var ch *amqp091.Channel
		for _, name := range names {
			if ctx.Err() != nil {
				break
			}
			if ch == nil {
				if ch, err = conn.Channel(); err != nil {
					break
				}
			}
			q, err := ch.QueueDeclarePassive(name, false, false, false, false, nil)
			if err != nil {
				ch = nil // the broker closed the channel
				continue
			}
			out[ops.QueueRef{Vhost: vhost, Name: name}] = q.Messages
		}
		conn.Close()
	}
	return out
}
