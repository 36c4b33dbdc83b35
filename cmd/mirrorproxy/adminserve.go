package main

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/admin"
	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/config"
	"github.com/mirrorproxy/mirrorproxy/failover/group"
	"github.com/mirrorproxy/mirrorproxy/replicate"
)

// groupNode is the admin API's view of a running group node.
type groupNode struct{ g *group.Group }

func (n groupNode) Group() replicate.Group {
	v := n.g.View()
	pg := replicate.Group{Master: v.Master}
	for _, m := range v.Members {
		pg.Members = append(pg.Members, replicate.Member{Node: m.ID, JoinEpoch: m.JoinEpoch})
	}
	return pg
}

// TransferMaster is ctl transfer_master: any node takes it (a mirror
// passes it to the master).
func (n groupNode) TransferMaster(ctx context.Context, target string) (string, uint64, error) {
	v, err := n.g.TransferMaster(ctx, target)
	return v.Master, v.Epoch, err
}

// Queues are the queues declared through the master (its catalog, fed by
// the topology ops it replicates). A mirror lists none: ask the master.
func (n groupNode) Queues(vhost string) []string {
	if m := n.g.Master(); m != nil {
		return m.Queues(vhost)
	}
	return nil
}

// brokerMessages counts a queue's ready messages on the local broker with
// a passive queue.declare, over a connection of its own per call. Only the
// master's broker has the queue's count: a mirror's holds copies unacked.
type brokerMessages struct {
	url      string // amqp://user:pass@host:port/ (the vhost is replaced)
	isMaster func() bool
}

func (b brokerMessages) Messages(ctx context.Context, vhost, queue string) (int, error) {
	if b.isMaster != nil && !b.isMaster() {
		return 0, fmt.Errorf("this node is a mirror: ask the master's admin API")
	}
	conn, err := dialVhost(ctx, b.url, vhost, "mirrorproxy admin status", 10*time.Second)
	if err != nil {
		return 0, fmt.Errorf("connecting to the broker for queue %q: %w", queue, err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return 0, fmt.Errorf("opening a channel for queue %q: %w", queue, err)
	}
	q, err := ch.QueueDeclarePassive(queue, false, false, false, false, nil)
	if err != nil {
		return 0, fmt.Errorf("queue %q: %w", queue, err)
	}
	return q.Messages, nil
}

// The group tells which queues are syncing too (list_queues state).
var _ admin.SyncingReporter = (*group.Group)(nil)

// startAdmin serves the admin API of a group node on its admin.address.
// Policy changes and syncs go through the group (the master makes them;
// a mirror refuses them, naming the master), and the master's synced sets
// fill synchronised_slave_pids.
func startAdmin(cfg *config.Config, g *group.Group, policies *replicate.Policies, log zerolog.Logger) (*admin.Server, error) {
	log = log.With().Str("part", "admin").Logger()
	h, err := admin.NewHandler(admin.Config{
		Node: groupNode{g}, Policies: policies, Token: cfg.Admin.Token, Logger: log,
		Messages: brokerMessages{url: cfg.BrokerURL(), isMaster: g.IsMaster},
		Changer:  g, Syncer: g, Synced: g, Transferer: groupNode{g},
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Admin.Address)
	if err != nil {
		return nil, fmt.Errorf("admin API listener: %w", err)
	}
	log.Info().Str("listen", ln.Addr().String()).Bool("changes", cfg.Admin.Token != "").Msg("admin API listening")
	return admin.Start(ln, withOps(cfg, g, h, log), log), nil
}

// dialVhost opens a connection of the sidecar's own to vhost on the broker
// at brokerURL (amqp://user:pass@host:port/, the vhost replaced), named
// name, within ctx's deadline or else timeout.
func dialVhost(ctx context.Context, brokerURL, vhost, name string, timeout time.Duration) (*amqp091.Connection, error) {
	u, err := url.Parse(brokerURL)
	if err != nil {
		return nil, fmt.Errorf("broker URL: %w", err)
	}
	u.Path, u.RawPath = "/"+vhost, "/"+url.PathEscape(vhost)
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	return amqp091.DialConfig(u.String(), amqp091.Config{
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: timeout}
			return d.DialContext(ctx, network, addr)
		},
		Properties: amqp091.Table{"connection_name": name},
	})
}
