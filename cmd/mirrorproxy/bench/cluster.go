package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/failover/group"
	"github.com/mirrorproxy/mirrorproxy/gm"
	"github.com/mirrorproxy/mirrorproxy/proxy"
	"github.com/mirrorproxy/mirrorproxy/replicate"
	"github.com/mirrorproxy/mirrorproxy/testenv"
)

// queuePrefix starts every bench queue's name; the mirroring policies of
// the 3-node targets match it.
const queuePrefix = "mirrorproxy-bench-"

// mirrorPattern is the policy pattern for bench queues.
const mirrorPattern = "^" + queuePrefix

// clusterNodes is the size of the 3-node targets.
const clusterNodes = 3

// groupStartTimeout bounds starting a 3-node target: brokers, sidecars,
// clustering.
const groupStartTimeout = 3 * time.Minute

// groupSecret authenticates the in-process sidecars to each other. They
// listen on loopback only and live as long as the run.
var groupSecret = []byte("mirrorproxy bench group secret, loopback only")

// mirroredGroup is the product's mirrored group: three independent brokers
// (testenv) and three sidecars of package failover/group in this process.
// Clients use the master's sidecar (the first peer).
type mirroredGroup struct {
	env    *testenv.Group
	groups []*group.Group
	served []chan error
	addr   string // the master sidecar's client address
	url    string
}

// startMirroredGroup starts the brokers and sidecars with an ha-mode all
// policy on the bench queues and waits until all three are members.
func startMirroredGroup(ctx context.Context, log zerolog.Logger) (mg *mirroredGroup, err error) {
	ctx, cancel := context.WithTimeout(ctx, groupStartTimeout)
	defer cancel()
	env, err := testenv.StartGroup(ctx, testenv.Options{
		Nodes:  clusterNodes,
		Logger: func(format string, args ...any) { log.Info().Msgf(format, args...) },
	})
	if err != nil {
		return nil, fmt.Errorf("start the mirrored target's brokers: %w", err)
	}
	mg = &mirroredGroup{env: env}
	defer func() {
		if err != nil {
			err = errors.Join(err, mg.Close())
			mg = nil
		}
	}()

	def, err := replicate.ParseDefinition(map[string]any{"ha-mode": "all", "ha-sync-mode": "automatic"})
	if err != nil {
		return nil, fmt.Errorf("mirrored target policy: %w", err)
	}
	pol, err := replicate.NewPolicy("/", "bench-ha-all", mirrorPattern, replicate.ApplyTo("queues"), 0, def)
	if err != nil {
		return nil, fmt.Errorf("mirrored target policy: %w", err)
	}
	policies := &replicate.Policies{}
	if err := policies.Set(pol); err != nil {
		return nil, fmt.Errorf("mirrored target policy: %w", err)
	}

	// The sidecars log warnings and errors only: their info lines would
	// drown the progress lines.
	slog := log.Level(zerolog.WarnLevel)
	var peers []group.Peer
	var cls, gls, rls []net.Listener
	closeAll := func() {
		for _, ls := range [][]net.Listener{cls, gls, rls} {
			for _, l := range ls {
				_ = l.Close()
			}
		}
	}
	for i := range clusterNodes {
		var ls [3]net.Listener
		for j := range ls {
			if ls[j], err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
				closeAll()
				for _, l := range ls[:j] {
					_ = l.Close()
				}
				return nil, fmt.Errorf("listen for sidecar %d: %w", i, err)
			}
		}
		cls, gls, rls = append(cls, ls[0]), append(gls, ls[1]), append(rls, ls[2])
		peers = append(peers, group.Peer{ID: fmt.Sprintf("bench-%d", i), ClientAddr: ls[0].Addr().String(),
			GMAddr: ls[1].Addr().String(), RaftAddr: ls[2].Addr().String()})
	}
	for i, node := range env.Nodes {
		g, err := group.Start(group.Config{
			Self: peers[i].ID, Peers: peers, GMListener: gls[i], RaftListener: rls[i],
			Auth:      gm.AuthConfig{Secret: groupSecret},
			BrokerURL: node.URL, Policies: policies,
			Proxy:  proxy.Options{Upstream: node.AMQPAddr, Logger: slog},
			Logger: slog,
		})
		if err != nil {
			// Start closed this node's gm and raft listeners; close the rest.
			for _, l := range cls[i:] {
				_ = l.Close()
			}
			for _, ls := range [][]net.Listener{gls[i+1:], rls[i+1:]} {
				for _, l := range ls {
					_ = l.Close()
				}
			}
			return nil, fmt.Errorf("start sidecar %s: %w", peers[i].ID, err)
		}
		served := make(chan error, 1)
		go func() { served <- g.Serve(cls[i]) }()
		mg.groups = append(mg.groups, g)
		mg.served = append(mg.served, served)
	}
	for _, g := range mg.groups {
		v, err := g.WaitMembers(ctx)
		if err != nil {
			return nil, fmt.Errorf("mirrored target: waiting for all %d sidecars to join: %w", clusterNodes, err)
		}
		if v.Master != peers[0].ID {
			return nil, fmt.Errorf("mirrored target: master is %q, expected the first peer %q", v.Master, peers[0].ID)
		}
	}
	mg.addr = peers[0].ClientAddr
	if mg.url, err = urlVia(env.Nodes[0].URL, mg.addr); err != nil {
		return nil, err
	}
	log.Info().Str("master", mg.addr).Msg("mirrored group ready")
	return mg, nil
}

// Close stops the sidecars, waits for their Serve calls, and stops the
// brokers.
func (mg *mirroredGroup) Close() error {
	var errs []error
	for i, g := range mg.groups {
		if err := g.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close sidecar %d: %w", i, err))
		}
		if err := <-mg.served[i]; err != nil && !errors.Is(err, proxy.ErrServerClosed) && !errors.Is(err, group.ErrClosed) {
			errs = append(errs, fmt.Errorf("sidecar %d: serve: %w", i, err))
		}
	}
	if err := mg.env.Close(); err != nil {
		errs = append(errs, fmt.Errorf("stop the mirrored target's brokers: %w", err))
	}
	return errors.Join(errs...)
}

// rmqCluster is a RabbitMQ 3-node cluster of local brokers, with an
// ha-mode all policy (automatic sync) on the bench queues. Clients and
// queue declarations use node 0.
type rmqCluster struct {
	env *testenv.Group
	url string
}

// startRMQCluster starts three brokers (testenv gives them one Erlang
// cookie), joins nodes 1 and 2 to node 0 and sets the policy.
func startRMQCluster(ctx context.Context, log zerolog.Logger) (c *rmqCluster, err error) {
	ctx, cancel := context.WithTimeout(ctx, groupStartTimeout)
	defer cancel()
	env, err := testenv.StartGroup(ctx, testenv.Options{
		Nodes:  clusterNodes,
		Logger: func(format string, args ...any) { log.Info().Msgf(format, args...) },
	})
	if err != nil {
		return nil, fmt.Errorf("start the RabbitMQ cluster's brokers: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, env.Close())
		}
	}()
	first := env.Nodes[0]
	for _, n := range env.Nodes[1:] {
		for _, args := range [][]string{{"stop_app"}, {"join_cluster", first.Name}, {"start_app"}} {
			if out, err := n.Ctl(ctx, args...); err != nil {
				return nil, fmt.Errorf("cluster node %s with %s: rabbitmqctl %v: %w\n%s", n.Name, first.Name, args, err, out)
			}
		}
	}
	if out, err := first.Ctl(ctx, "await_online_nodes", fmt.Sprint(clusterNodes)); err != nil {
		return nil, fmt.Errorf("RabbitMQ cluster: waiting for %d nodes: %w\n%s", clusterNodes, err, out)
	}
	if out, err := first.Ctl(ctx, "set_policy", "--apply-to", "queues", "bench-ha-all", mirrorPattern,
		`{"ha-mode":"all","ha-sync-mode":"automatic"}`); err != nil {
		return nil, fmt.Errorf("RabbitMQ cluster: set the ha-all policy: %w\n%s", err, out)
	}
	if err := checkMirrored(ctx, first); err != nil {
		return nil, fmt.Errorf("RabbitMQ cluster: %w", err)
	}
	log.Info().Str("node", first.Name).Str("url", first.URL).Msg("RabbitMQ cluster ready")
	return &rmqCluster{env: env, url: first.URL}, nil
}

// checkMirrored declares a classic queue that the policy matches on node 0
// and waits until both other nodes hold synchronised mirrors of it, so a
// cluster whose policy does not mirror is never measured.
func checkMirrored(ctx context.Context, first *testenv.Node) (err error) {
	conn, err := dial(ctx, first.URL, "cluster check")
	if err != nil {
		return err
	}
	defer closeConn(conn, &err)
	queue := queuePrefix + "cluster-check"
	if err := declare(conn, queue, "classic"); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, deleteQueue(conn, queue)) }()
	const wait = 30 * time.Second
	deadline := time.Now().Add(wait)
	for {
		out, err := first.Ctl(ctx, "list_queues", "-q", "--no-table-headers", "name", "synchronised_slave_pids")
		if err != nil {
			return fmt.Errorf("list_queues: %w\n%s", err, out)
		}
		synced := -1
		for line := range strings.Lines(out) {
			if name, pids, ok := strings.Cut(strings.TrimSpace(line), "\t"); ok && name == queue {
				synced = strings.Count(pids, "<")
			}
		}
		if synced == clusterNodes-1 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("queue %s has %d synchronised mirrors after %v, expected %d (policy not applied?):\n%s",
				queue, synced, wait, clusterNodes-1, out)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Close stops the cluster's brokers.
func (c *rmqCluster) Close() error {
	if err := c.env.Close(); err != nil {
		return fmt.Errorf("stop the RabbitMQ cluster: %w", err)
	}
	return nil
}
