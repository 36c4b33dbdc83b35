package group

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/failover"
	"github.com/mirrorproxy/mirrorproxy/failover/peerlink"
	"github.com/mirrorproxy/mirrorproxy/gm"
	"github.com/mirrorproxy/mirrorproxy/proxy"
	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
	"github.com/mirrorproxy/mirrorproxy/replicate"
)

// Peer is one node of the group as configured.
type Peer struct {
	// ID is the node's name: its gm member and raft voter ID, and the name
	// ha-mode "nodes" policies list.
	ID string
	// ClientAddr is where the node's sidecar accepts AMQP clients.
	ClientAddr string
	// GMAddr and RaftAddr are the node's ring and raft addresses. The
	// ring's address also takes the peer links that carry sessions from
	// other sidecars' fronts to this node's core while it is master.
	GMAddr, RaftAddr string
}

// Config configures one node of a group.
type Config struct {
	// Self is this node's ID; it must be one of Peers.
	Self string
	// Peers is every node of the group, this one included, in bootstrap
	// order: the first bootstraps raft and admits the others in this order,
	// so it is the first master.
	Peers []Peer
	// GMListener and RaftListener accept peers on this node's ring and raft
	// addresses; the group closes them.
	GMListener, RaftListener net.Listener
	// Auth authenticates peers on both (the same secret or TLS).
	Auth gm.AuthConfig
	// BrokerURL is the local broker with the sidecar's own credentials,
	// amqp://user:pass@host:port/ (mirror apply; the vhost comes from ops).
	BrokerURL string
	// Policies decide which queues are mirrored; nil means none but those
	// with legacy x-ha-policy arguments.
	Policies *replicate.Policies
	// Proxy is the proxy server's settings on the master; the group sets
	// Replicator.
	Proxy proxy.Options
	// Ring tunes the gm ring; HeartbeatInterval is gm's (default 100ms).
	Ring              gm.Config
	HeartbeatInterval time.Duration
	// FailureTimeout and LeaseDuration tune the views (failover.Config).
	FailureTimeout, LeaseDuration time.Duration
	// DataDir keeps this node's raft state on disk (failover.Config.DataDir);
	// empty keeps it in memory.
	DataDir string
	// MoveSessions moves the sessions of a surviving front to the new
	// master (proxy.Options.Resume; experimental, docs/FAILOVER.md); off,
	// a session whose master is lost is closed with 320 and its client
	// reconnects.
	MoveSessions bool
	// PromoteUnsynced is ha-promote-on-failure: always (elections may pick
	// a member not synced for every mirrored queue).
	PromoteUnsynced bool
	// ProbeInterval and ProbeTimeout tune the local broker's probe
	// (failover.HealthConfig: 250ms, 1s by default).
	ProbeInterval, ProbeTimeout time.Duration
	Logger                      zerolog.Logger
}

// Group is one running node of a mirrored group. It implements the
// server that cmd's serve drives: Serve, Shutdown, Close.
type Group struct {
	cfg   Config
	log   zerolog.Logger
	node  *gm.Node
	svc   atomic.Pointer[failover.Service]
	apply *replicate.Follower
	mir   *replicate.Mirror
	// stored is the node's front keys, shared by each Mirror and Master it
	// runs, so a promoted node drops re-sent publishes it stored already.
	stored *replicate.StoredKeys

	// viewMaster is the master of the latest committed view, set before
	// gm is given that view: gm's OnReset (on its own goroutine) reads it
	// to tell the master's admission from a mirror's.
	viewMaster atomic.Pointer[string]

	viewMu   sync.Mutex
	view     failover.View
	viewCh   chan struct{} // closed and replaced on every committed view
	syncedCh chan struct{} // cap 1: the master's synced sets changed
	stopped  chan struct{} // closed by Close

	boot       string             // this process's join identity (random)
	stopLinks  context.CancelFunc // ends the accepted peer links
	stoppedCtx context.Context    // done when stopped is closed

	// The driver (driver.go): the role and its inputs.
	role        *failover.Role // the driver's goroutine only
	roleState   atomic.Int32   // role.State(), published for other goroutines
	roleCh      chan struct{}  // closed and replaced when roleState changes (under viewMu)
	inputs      chan input
	viewWake    chan struct{} // cap 1
	pendingMu   sync.Mutex
	pendingView *failover.View
	probe       *failover.BrokerProbe

	roleMu     sync.Mutex
	master     *replicate.Master   // while the core is open (serving or held)
	masterStop chan struct{}       // stops masterLoop
	heldTopo   *replicate.Topology // the last core's topology, until another master serves
	serving    bool                // the core serves (not fenced)
	srv        *proxy.Server       // the front; its legs: the broker on the master, peer links elsewhere
	links      *peerlink.Dialer
	closed     bool // Shutdown or Close: Serve starts no server

	quit     chan struct{} // closed by Shutdown or Close: Serve stops waiting
	quitOnce sync.Once

	// What the node tells about itself (status.go).
	events   history
	counters counters

	wg        sync.WaitGroup // the driver and its background work, masterLoop
	closeOnce sync.Once
	closeErr  error
}

// Errors.
var (
	// ErrClosed is returned by Serve and WaitMaster after Close.
	ErrClosed = errors.New("group: closed")
)

// Start validates cfg and starts the node's ring member, raft voter and
// mirror (which connects to the local broker on the first op).
func Start(cfg Config) (*Group, error) {
	if err := validate(&cfg); err != nil {
		closeListeners(cfg)
		return nil, err
	}
	if cfg.Policies == nil {
		cfg.Policies = &replicate.Policies{}
	}
	log := cfg.Logger.With().Str("node", cfg.Self).Logger()
	g := &Group{cfg: cfg, log: log, viewCh: make(chan struct{}), syncedCh: make(chan struct{}, 1), stopped: make(chan struct{}), quit: make(chan struct{}),
		roleCh: make(chan struct{}), inputs: make(chan input, 16), viewWake: make(chan struct{}, 1),
		role: failover.NewRole(failover.RoleConfig{Self: cfg.Self, Retry: 250 * time.Millisecond, HandoverTimeout: handoverTimeout})}
	var b [8]byte
	rand.Read(b[:])
	g.boot = hex.EncodeToString(b[:])
	var stopCtx context.CancelFunc
	g.stoppedCtx, stopCtx = context.WithCancel(context.Background())
	go func() { <-g.stopped; stopCtx() }()

	g.stored = replicate.NewStoredKeys(0)
	mir, err := replicate.NewMirror(context.Background(), replicate.MirrorConfig{
		BrokerURL: cfg.BrokerURL, Mirrored: g.mirrored, Policies: cfg.Policies, Self: cfg.Self, Stored: g.stored,
		Logger: log.With().Str("part", "mirror").Logger(),
	})
	if err != nil {
		closeListeners(cfg)
		return nil, fmt.Errorf("group: %w", err)
	}
	g.mir = mir
	addrs := map[string]string{}
	for _, p := range cfg.Peers {
		addrs[p.ID] = p.GMAddr
	}
	g.links = peerlink.NewDialer(peerlink.Config{Self: cfg.Self, Auth: cfg.Auth,
		Resolve: func(id string) string { return addrs[id] }, DialTimeout: cfg.Proxy.DialTimeout,
		Logger: log.With().Str("part", "peerlink").Logger()})
	linkCtx, stopLinks := context.WithCancel(context.Background())
	g.stopLinks = stopLinks
	node, err := gm.StartNode(gm.NodeConfig{
		ID: cfg.Self, Ring: cfg.Ring, Listener: cfg.GMListener, Auth: cfg.Auth,
		Resolve:     func(id string) string { return addrs[id] },
		Deliver:     g.deliver,
		OnHeartbeat: g.heard,
		OnReset:     g.admitted,
		Handoff: map[string]func(net.Conn, string){peerlink.Purpose: func(c net.Conn, peer string) {
			peerlink.Serve(linkCtx, c, peer, peerlink.Handler{Session: g.serveLeg, Request: g.serveRequest},
				log.With().Str("part", "peerlink").Logger())
		}},
		HeartbeatInterval: cfg.HeartbeatInterval,
		Logger:            log,
	})
	if err != nil {
		stopLinks()
		mir.Close()
		cfg.RaftListener.Close()
		return nil, fmt.Errorf("group: %w", err)
	}
	g.node = node
	g.apply = replicate.NewFollower(replicate.FollowerConfig{Mirror: mir, Ring: node, Self: cfg.Self, Logger: log})

	var voters []failover.Voter
	for _, p := range cfg.Peers {
		voters = append(voters, failover.Voter{ID: p.ID, RaftAddr: p.RaftAddr})
	}
	svc, err := failover.Start(failover.Config{
		ID: cfg.Self, RaftListener: cfg.RaftListener, Auth: cfg.Auth,
		Bootstrap: cfg.Peers[0].ID == cfg.Self, Voters: voters,
		FailureTimeout: cfg.FailureTimeout, LeaseDuration: cfg.LeaseDuration,
		DataDir: cfg.DataDir, OnView: g.onView, Logger: log,
	})
	if err != nil {
		g.apply.Stop()
		g.apply.Wait()
		stopLinks()
		node.Close()
		mir.Close()
		return nil, fmt.Errorf("group: %w", err)
	}
	g.svc.Store(svc)
	g.probe = failover.StartBrokerProbe(failover.HealthConfig{URL: cfg.BrokerURL, Interval: cfg.ProbeInterval,
		Timeout: cfg.ProbeTimeout, Logger: log.With().Str("part", "probe").Logger()},
		func(h failover.BrokerHealth) { g.post(input{health: h}) })
	g.wg.Add(1)
	go g.drive()
	return g, nil
}

func validate(cfg *Config) error {
	if cfg.GMListener == nil || cfg.RaftListener == nil {
		return errors.New("group: config needs GMListener and RaftListener")
	}
	if cfg.BrokerURL == "" {
		return errors.New("group: config needs BrokerURL (the local broker, with the sidecar's credentials)")
	}
	if len(cfg.Peers) == 0 {
		return errors.New("group: config has no peers")
	}
	seen := map[string]bool{}
	self := false
	for i, p := range cfg.Peers {
		if p.ID == "" || p.ClientAddr == "" || p.GMAddr == "" || p.RaftAddr == "" {
			return fmt.Errorf("group: peer %d (%q) needs an ID and client, gm and raft addresses", i, p.ID)
		}
		if seen[p.ID] {
			return fmt.Errorf("group: peer %q is listed twice", p.ID)
		}
		seen[p.ID] = true
		self = self || p.ID == cfg.Self
	}
	if !self {
		return fmt.Errorf("group: this node %q is not among the peers", cfg.Self)
	}
	return nil
}

func closeListeners(cfg Config) {
	if cfg.GMListener != nil {
		cfg.GMListener.Close()
	}
	if cfg.RaftListener != nil {
		cfg.RaftListener.Close()
	}
}

func (g *Group) heard(peer string) {
	if svc := g.svc.Load(); svc != nil {
		svc.Heard(peer)
	}
}

// admitted logs this node's admission to the ring as a new incarnation
// (gm's OnReset). A mirror's copies start unsynced, which an operator
// should know; the master (the group's first node at bootstrap, say) has
// no copies to sync: its admission is news, not a warning.
func (g *Group) admitted(self gm.Member) {
	if m := g.viewMaster.Load(); m != nil && *m == g.cfg.Self {
		g.log.Info().Uint64("incarnation", self.Inc).Msg("admitted to the group as the master")
		return
	}
	g.log.Warn().Uint64("incarnation", self.Inc).Msg("admitted as a new incarnation: this mirror's copies are unsynced until a sync")
}

// onView runs on raft's FSM goroutine for every committed view.
func (g *Group) onView(v failover.View) {
	// View() shows a committed view before gm acts on it: a confirm gm
	// releases once it installed a view without a member is never seen
	// beside a View() that still lists that member.
	g.viewMaster.Store(&v.Master)
	g.viewMu.Lock()
	old := g.view
	g.view = v
	close(g.viewCh)
	g.viewCh = make(chan struct{})
	g.viewMu.Unlock()
	g.viewApplied(old, v)
	g.node.InstallView(v.GM())
	if old.Master != "" && v.Master != old.Master {
		g.log.Warn().Str("was", old.Master).Str("now", v.Master).Uint64("epoch", v.Epoch).Msg("the view changed master")
	}
	if v.Master != "" && v.Master != g.cfg.Self {
		// Another master serves: what this node knew as master is stale.
		g.roleMu.Lock()
		g.heldTopo = nil
		g.roleMu.Unlock()
	}
	if v.Master == "" && v.LostMaster != "" && (old.LostMaster != v.LostMaster || old.Master != "") {
		g.log.Warn().Str("lost_master", v.LostMaster).Str("queues", queueList(v.LostQueues)).Uint64("epoch", v.Epoch).
			Msg("the group has no master: no member is synced for these queues, so it waits for the master it lost (its broker holds messages no member has) to rejoin")
	}
	g.post(input{view: &v})
}

// View returns the latest committed view this node applied.
func (g *Group) View() failover.View {
	g.viewMu.Lock()
	defer g.viewMu.Unlock()
	return g.view
}

// WaitMaster blocks until a committed view names a master and gm has
// installed it, and returns that view.
func (g *Group) WaitMaster(ctx context.Context) (failover.View, error) {
	for {
		g.viewMu.Lock()
		v, ch := g.view, g.viewCh
		g.viewMu.Unlock()
		if v.Master != "" {
			if err := g.node.WaitEpoch(ctx, v.Epoch); err != nil {
				return failover.View{}, err
			}
			return v, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return failover.View{}, ctx.Err()
		case <-g.stopped:
			return failover.View{}, ErrClosed
		}
	}
}

// WaitMembers blocks until the view holds every configured peer and gm has
// installed it.
func (g *Group) WaitMembers(ctx context.Context) (failover.View, error) {
	for {
		g.viewMu.Lock()
		v, ch := g.view, g.viewCh
		g.viewMu.Unlock()
		if len(v.Members) == len(g.cfg.Peers) {
			if err := g.node.WaitEpoch(ctx, v.Epoch); err != nil {
				return failover.View{}, err
			}
			return v, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return failover.View{}, ctx.Err()
		case <-g.stopped:
			return failover.View{}, ErrClosed
		}
	}
}

// Mirror is this node's mirror apply (for status and tests).
func (g *Group) Mirror() *replicate.Mirror {
	g.roleMu.Lock()
	defer g.roleMu.Unlock()
	return g.mir
}

// ApplyFailures is how many ops this node's mirror could not apply.
func (g *Group) ApplyFailures() int { return g.follower().Failures() }

// Master is this node's replicate.Master while it is the master, else nil.
func (g *Group) Master() *replicate.Master {
	g.roleMu.Lock()
	defer g.roleMu.Unlock()
	return g.master
}

// IsMaster reports whether this node's core serves clients.
func (g *Group) IsMaster() bool {
	g.roleMu.Lock()
	defer g.roleMu.Unlock()
	return g.master != nil && g.serving
}

// deliver runs on gm's goroutine for every op from another member.
func (g *Group) deliver(op gm.Op) {
	g.roleMu.Lock()
	master := g.master != nil
	g.roleMu.Unlock()
	if master {
		// A mirror's status op is for the master; it is taken in before
		// the op counts as applied, so the mirror's report is in the
		// synced sets before anything after it is stable. Other ops would
		// come from a former master (failover, not built): not applied.
		if k, _ := replicate.OpKindOf(op.Data); k == replicate.OpStatus {
			if st, err := replicate.ParseOp(op.Data); err == nil && len(st.Nodes) == 1 {
				if m := g.Master(); m != nil && st.Vhost == "" && st.Queue == "" {
					m.Fresh(st.Nodes[0], op.Sender.Inc)
				} else if m != nil {
					m.MarkUnsynced(st.Nodes[0], st.Vhost, st.Queue)
				}
			}
		} else {
			g.log.Warn().Str("sender", op.Sender.ID).Uint64("seq", op.Seq).Msg("master received another member's op; ignored")
		}
		g.node.Applied(op.Sender, op.Seq)
		return
	}
	g.follower().Deliver(op)
}

// mirrored is the mirror's policy decision for a declared queue: its
// effective policy (or legacy x-ha-policy) places a copy on this node.
func (g *Group) mirrored(vhost, queue string, args amqp.Table) bool {
	e, ok := g.cfg.Policies.Effective(vhost, queue, false, args)
	if !ok {
		return false
	}
	v := g.View()
	pg := replicate.Group{Master: v.Master}
	for _, m := range v.Members {
		pg.Members = append(pg.Members, replicate.Member{Node: m.ID, JoinEpoch: m.JoinEpoch})
	}
	return slices.Contains(replicate.Plan(e, pg, nil, nil).Mirrors, g.cfg.Self)
}

// serveLeg serves a session's leg that another sidecar's front opened over
// the peer link: this node's core serves it while this node is master;
// otherwise the leg is closed (the front reports the master unreachable).
func (g *Group) serveLeg(c net.Conn) {
	g.roleMu.Lock()
	srv := g.srv
	if g.master == nil || !g.serving {
		srv = nil
	}
	g.roleMu.Unlock()
	if srv == nil {
		g.log.Warn().Str("client", c.RemoteAddr().String()).Msg("a peer opened a session here but this node does not serve as the master; closed it")
		c.Close()
		return
	}
	// ErrServerClosed only: the server closed c itself (the node stopped
	// serving as master between the check above and this call).
	_ = srv.ServeConn(c)
}

// masterCore is a mirror's core: each session's leg goes over the peer
// link to the sidecar of the master the latest view names.
type masterCore struct{ g *Group }

func (c masterCore) Open(ctx context.Context, client, _ net.Addr) (net.Conn, error) {
	master := c.g.View().Master
	switch master {
	case "":
		return nil, errors.New("the group has no master")
	case c.g.cfg.Self:
		return nil, fmt.Errorf("the view names this node (%s) master but it does not serve as one", master)
	}
	return c.g.links.Open(ctx, master, client)
}

func (c masterCore) String() string { return "the master's sidecar over the peer link" }

// Serve waits until the view names a master and this node's role agrees
// (its core serves when the view names it), then serves clients on ln
// until Shutdown or Close with the node's front: a proxy.Server whose
// sessions go to the local broker with the ring as Replicator while this
// node's core serves, and over the peer link to the master's sidecar
// otherwise; the driver switches the route as the role changes. It returns
// proxy.ErrServerClosed after Shutdown or Close.
func (g *Group) Serve(ln net.Listener) error { return g.serve(ln, nil) }

// ServeTLS is Serve for an amqps listener (proxy.Server.ServeTLS). A node
// may serve both at once: they share one front.
func (g *Group) ServeTLS(ln net.Listener, cfg *tls.Config) error {
	if cfg == nil {
		ln.Close()
		return errors.New("group: ServeTLS needs a tls.Config")
	}
	return g.serve(ln, cfg)
}

func (g *Group) serve(ln net.Listener, tlsCfg *tls.Config) error {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-g.quit:
		case <-ctx.Done():
		}
		cancel()
	}()
	v, err := g.waitSettled(ctx)
	cancel()
	if err != nil {
		ln.Close()
		if errors.Is(err, ErrClosed) || errors.Is(err, context.Canceled) || errors.Is(err, gm.ErrClosed) {
			return proxy.ErrServerClosed
		}
		return err
	}
	g.roleMu.Lock()
	if g.closed {
		g.roleMu.Unlock()
		ln.Close()
		return proxy.ErrServerClosed
	}
	if g.srv == nil {
		opts := g.cfg.Proxy
		opts.Resume = g.cfg.MoveSessions // sessions move with the master (invariant 5)
		opts.Core, opts.Replicator = masterCore{g}, nil
		if g.master != nil && g.serving {
			r := g.localRoute(g.master)
			opts.Core, opts.Replicator = r.Core, r.Replicator
		}
		srv, err := proxy.NewServer(opts)
		if err != nil {
			g.roleMu.Unlock()
			ln.Close()
			return fmt.Errorf("group: %w", err)
		}
		g.srv = srv
	}
	srv, master := g.srv, g.master != nil && g.serving
	g.roleMu.Unlock()
	if master {
		g.log.Info().Uint64("epoch", v.Epoch).Msg("front serving clients with this node's core (the master)")
	} else {
		g.log.Info().Str("master", v.Master).Uint64("epoch", v.Epoch).Msg("front serving clients over the peer link to the master's sidecar")
	}
	if tlsCfg != nil {
		return srv.ServeTLS(ln, tlsCfg)
	}
	return srv.Serve(ln)
}

// waitSettled blocks until the view names a master that gm installed and,
// when it names this node, this node's core serves.
func (g *Group) waitSettled(ctx context.Context) (failover.View, error) {
	for {
		v, err := g.WaitMaster(ctx)
		if err != nil {
			return v, err
		}
		g.viewMu.Lock()
		vch, rch := g.viewCh, g.roleCh
		g.viewMu.Unlock()
		if v.Master != g.cfg.Self || g.IsMaster() {
			return v, nil
		}
		select {
		case <-vch:
		case <-rch:
		case <-ctx.Done():
			return failover.View{}, ctx.Err()
		case <-g.stopped:
			return failover.View{}, ErrClosed
		}
	}
}

// Shutdown leaves the group cleanly, then stops accepting clients and lets
// sessions finish until ctx ends (then closes them), like
// proxy.Server.Shutdown. A master with other members first hands over to a
// synced mirror (bounded by the role's handover timeout; its sessions are
// closed with 320 and their clients reconnect to the new master); every
// node then asks the leader to remove it. The ring, views and mirror keep
// running until Close.
func (g *Group) Shutdown(ctx context.Context) error {
	g.post(input{shutdown: true})
	for g.RoleState() != failover.RoleLeft {
		g.viewMu.Lock()
		ch := g.roleCh
		g.viewMu.Unlock()
		if g.RoleState() == failover.RoleLeft {
			break
		}
		select {
		case <-ch:
			continue
		case <-ctx.Done():
		case <-g.stopped:
		}
		g.log.Warn().Stringer("role", g.RoleState()).Msg("shutdown: did not leave the group in time")
		break
	}
	// The leave goes to the raft leader: wait (bounded) for the view
	// without this node, so the others need not time it out.
wait:
	for {
		g.viewMu.Lock()
		v, ch := g.view, g.viewCh
		g.viewMu.Unlock()
		if _, in := v.Member(g.cfg.Self); !in || len(v.Members) == 1 {
			break
		}
		select {
		case <-ch:
		case <-ctx.Done():
			break wait
		case <-g.stopped:
			break wait
		}
	}
	g.stopServing()
	g.roleMu.Lock()
	srv := g.srv
	g.roleMu.Unlock()
	if srv != nil {
		return srv.Shutdown(ctx)
	}
	return nil
}

// stopServing makes Serve return, or not start a server, from now on.
func (g *Group) stopServing() {
	g.roleMu.Lock()
	g.closed = true
	g.roleMu.Unlock()
	g.quitOnce.Do(func() { close(g.quit) })
}

// Deduplicated reports how many publishes that moved sessions sent again
// this node dropped because it had stored them already.
func (g *Group) Deduplicated() int64 {
	g.roleMu.Lock()
	srv := g.srv
	g.roleMu.Unlock()
	if srv == nil {
		return 0
	}
	return srv.Deduplicated()
}

// Close stops everything the group started and waits for it: client
// sessions, the master's replicator, the ring, the raft voter and the
// mirror (which closes its broker connections without releasing its held
// copies).
func (g *Group) Close() error {
	g.closeOnce.Do(func() {
		close(g.stopped)
		g.stopServing()
		g.roleMu.Lock()
		srv, m := g.srv, g.master
		g.roleMu.Unlock()
		var errs []error
		if srv != nil {
			if err := srv.Close(); err != nil && !errors.Is(err, proxy.ErrServerClosed) {
				errs = append(errs, err)
			}
		}
		if m != nil {
			m.Close()
		}
		g.probe.Close()
		f := g.follower()
		f.Stop()
		// Closing the mirror ends an Apply, or a release, blocked on its
		// broker.
		if mir := g.Mirror(); mir != nil {
			if err := mir.Close(); err != nil {
				errs = append(errs, fmt.Errorf("mirror: %w", err))
			}
		}
		g.wg.Wait()
		g.links.Close()
		g.stopLinks()
		if err := g.svc.Load().Close(); err != nil {
			errs = append(errs, fmt.Errorf("raft: %w", err))
		}
		if err := g.node.Close(); err != nil {
			errs = append(errs, fmt.Errorf("gm: %w", err))
		}
		f.Wait()
		g.closeErr = errors.Join(errs...)
	})
	return g.closeErr
}
