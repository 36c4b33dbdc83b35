package group

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/mirrorproxy/mirrorproxy/failover"
	"github.com/mirrorproxy/mirrorproxy/gm"
	"github.com/mirrorproxy/mirrorproxy/proxy"
	"github.com/mirrorproxy/mirrorproxy/replicate"
)

// The driver carries out the node's failover.Role: it feeds the role its
// inputs (committed views, the lease at every tick, the broker probe's
// verdicts, completions of what it asked) on one goroutine, and does what
// the role's actions say. It takes no decision of its own: the failover
// logic is the role's, tested from seeds (failover/role_sim_test.go).
// Actions that wait (the old master's tail, releasing the held copies,
// requests to the raft leader) run on goroutines of their own and report
// back as inputs.

// tickInterval is how often the role sees the lease; a master whose lease
// lapsed stops serving within it.
const tickInterval = 50 * time.Millisecond

// input is one thing that happened, for the driver's goroutine.
type input struct {
	view     *failover.View
	health   failover.BrokerHealth
	joined   uint64 // the leader admitted this incarnation
	tail     uint64 // the tail up to this barrier is applied
	released uint64 // the held copies are released for this barrier
	shutdown bool
	handover *string       // hand over to this member ("": the leader chooses)
	ping     chan struct{} // closed by the driver (Healthy)
}

// post hands an input to the driver; it never blocks the caller for long
// (the driver's queue is bounded; views are coalesced).
func (g *Group) post(in input) {
	if in.view != nil {
		// Views come from raft's FSM goroutine in order: keep the latest.
		g.pendingMu.Lock()
		g.pendingView = in.view
		g.pendingMu.Unlock()
		select {
		case g.viewWake <- struct{}{}:
		default:
		}
		return
	}
	select {
	case g.inputs <- in:
	case <-g.stopped:
	}
}

// drive is the driver's goroutine.
func (g *Group) drive() {
	defer g.wg.Done()
	t := time.NewTicker(tickInterval)
	defer t.Stop()
	for {
		var acts []failover.Action
		select {
		case <-g.stopped:
			return
		case <-t.C:
			acts = g.role.Tick(time.Now(), g.svc.Load().Lease().Valid())
		case <-g.viewWake:
			g.pendingMu.Lock()
			v := g.pendingView
			g.pendingMu.Unlock()
			if v != nil {
				acts = g.role.ViewCommitted(*v)
			}
		case in := <-g.inputs:
			switch {
			case in.ping != nil:
				close(in.ping)
			case in.health != failover.BrokerUnknown:
				acts = g.role.BrokerHealth(in.health)
			case in.joined != 0:
				acts = g.role.Joined(in.joined)
			case in.tail != 0:
				acts = g.role.TailApplied(in.tail)
			case in.released != 0:
				acts = g.role.Released(in.released)
			case in.shutdown:
				acts = g.role.Shutdown(time.Now())
			case in.handover != nil:
				acts = g.role.HandoverRequested(*in.handover, time.Now())
			}
		}
		for len(acts) > 0 {
			a := acts[0]
			acts = append(acts[1:], g.act(a)...)
		}
		g.publishRole()
	}
}

// publishRole makes the role's state readable from other goroutines.
func (g *Group) publishRole() {
	st := g.role.State()
	if prev := failover.RoleState(g.roleState.Swap(int32(st))); prev != st {
		g.log.Info().Stringer("from", prev).Stringer("to", st).Uint64("epoch", g.role.Epoch()).Msg("role changed")
		g.roleApplied(prev, st, g.role.Epoch())
		g.roleChanged()
	}
}

// roleChanged wakes whoever waits for a role (WaitServing, Shutdown).
func (g *Group) roleChanged() {
	g.viewMu.Lock()
	close(g.roleCh)
	g.roleCh = make(chan struct{})
	g.viewMu.Unlock()
}

// RoleState is this node's role now.
func (g *Group) RoleState() failover.RoleState { return failover.RoleState(g.roleState.Load()) }

// act carries out one action and returns the inputs' actions it led to at
// once (SessionsMoved is reported as soon as the route changed).
func (g *Group) act(a failover.Action) []failover.Action {
	log := g.log.With().Str("action", fmt.Sprintf("%T", a)).Logger()
	switch a := a.(type) {
	case failover.ActJoin:
		g.background(func(ctx context.Context) {
			v, err := g.toLeader(ctx, leaderRequest{Kind: reqJoin, Boot: g.boot})
			if err != nil {
				log.Debug().Err(err).Msg("join not admitted yet; the role asks again")
				return
			}
			if m, ok := v.Member(g.cfg.Self); ok {
				g.post(input{joined: m.JoinEpoch})
			}
		})
	case failover.ActLeave:
		log.Warn().Str("reason", a.Reason).Uint64("incarnation", a.Incarnation).Msg("leaving the group")
		g.background(func(ctx context.Context) {
			if _, err := g.toLeader(ctx, leaderRequest{Kind: reqLeave, Incarnation: a.Incarnation}); err != nil {
				log.Debug().Err(err).Msg("leave not applied yet; the role asks again")
			}
		})
	case failover.ActRequestHandover:
		g.background(func(ctx context.Context) {
			if _, err := g.toLeader(ctx, leaderRequest{Kind: reqHandover, Target: a.Target, IfEpoch: a.IfEpoch}); err != nil {
				log.Warn().Err(err).Str("target", a.Target).Msg("handover request refused")
			}
		})
	case failover.ActApplyTail:
		f := g.follower()
		g.background(func(ctx context.Context) {
			// The core serves on the ring of this view: gm must have
			// installed it (a master that opens its core before gm joined
			// its ring would never see a stable point, so never confirm).
			for ctx.Err() == nil {
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := g.node.WaitEpoch(wctx, a.Barrier)
				cancel()
				if err == nil {
					break
				}
				if errors.Is(err, gm.ErrClosed) {
					return
				}
				log.Warn().Err(err).Uint64("epoch", a.Barrier).Msg("promotion waits for gm to install the view")
			}
			for ctx.Err() == nil {
				tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := f.ApplyTail(tctx)
				cancel()
				if err == nil {
					g.post(input{tail: a.Barrier})
					return
				}
				if errors.Is(err, replicate.ErrMirrorClosed) {
					return
				}
				log.Warn().Err(err).Msg("promotion waits for the old master's tail")
			}
		})
	case failover.ActReleaseHeld:
		f := g.follower()
		g.background(func(ctx context.Context) {
			if err := f.Release(ctx); err != nil {
				log.Error().Err(err).Msg("releasing the held copies failed; some stay held until the mirror closes")
			}
			g.post(input{released: a.Barrier})
		})
	case failover.ActOpenCore:
		g.openCore(a.Epoch)
	case failover.ActFence:
		g.fence(a.Reason)
	case failover.ActMoveSessions:
		g.moveSessions(a.To)
		return g.role.SessionsMoved(a.Epoch)
	case failover.ActCloseCore:
		g.closeCore()
	case failover.ActResync:
		g.resync(a.Incarnation)
	}
	return nil
}

// background runs fn on a goroutine the group owns; its context ends with
// the group.
func (g *Group) background(fn func(ctx context.Context)) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		stop := context.AfterFunc(g.stoppedCtx, cancel)
		defer stop()
		fn(ctx)
	}()
}

func (g *Group) follower() *replicate.Follower {
	g.roleMu.Lock()
	defer g.roleMu.Unlock()
	return g.apply
}

// openCore makes this node serve as the master of the view at epoch: the
// follower's catalog becomes the Master's (the first time), and the front
// sends new sessions to the local broker with the Master as Replicator.
func (g *Group) openCore(epoch uint64) {
	v := g.View()
	g.roleMu.Lock()
	m := g.master
	if m == nil {
		// Master again before it learnt anything newer (the lost master
		// back, the sole member restarted in process): its broker holds
		// the queues it had, mirrored as before.
		if t := g.heldTopo; t != nil && g.apply.Adopt(*t) {
			g.log.Info().Int("queues", t.Queues()).Msg("master again: its queues are mirrored as when it stopped serving")
		}
		g.heldTopo = nil
		m = g.apply.Promote(replicate.MasterConfig{
			Ring: g.node, Epoch: epoch, Self: g.cfg.Self, BrokerURL: g.cfg.BrokerURL,
			Policies: g.cfg.Policies, Members: members(v), Logger: g.log.With().Str("part", "master").Logger(),
			HoldUnrecorded: true, Stored: g.stored,
			Outstanding: func(vhost, queue string) []uint64 {
				g.roleMu.Lock()
				srv := g.srv
				g.roleMu.Unlock()
				if srv == nil {
					return nil
				}
				return srv.Outstanding(vhost, queue)
			},
		}, v.Synced)
		m.OnSyncedChange(g.syncedChanged)
		g.master = m
		g.masterStop = make(chan struct{})
		g.wg.Add(1)
		go g.masterLoop(m, v, g.masterStop)
		if g.mir != nil {
			g.mir.Close() // released: it holds nothing any more
		}
	}
	g.serving = true
	srv := g.srv
	g.roleMu.Unlock()
	if srv != nil {
		srv.SetRoute(g.localRoute(m))
	}
	// Every mirror decides with the master's policies, from here on in op
	// order.
	if err := m.ProposePolicies(); err != nil {
		g.log.Warn().Err(err).Msg("could not replicate the policies to the mirrors")
	}
	g.log.Info().Uint64("epoch", epoch).Msg("serving as the master")
}

func (g *Group) localRoute(m *replicate.Master) proxy.Route {
	return proxy.Route{Core: proxy.BrokerCore{Addr: g.cfg.Proxy.Upstream, DialTimeout: g.cfg.Proxy.DialTimeout,
		SendProxyProtocol: g.cfg.Proxy.SendProxyProtocol, TLS: g.cfg.Proxy.UpstreamTLS}, Replicator: m, Authority: g.authority}
}

// authority is the core's check before its broker's frames reach a client
// (proxy.Route.Authority): this node holds its lease (waiting up to twice
// the lease while raft confirms it, after a freeze of the process, say)
// and the latest view it applied names it master. A master the group
// replaced while it was frozen fails it, so what its broker delivered or
// confirmed meanwhile never reaches a client.
func (g *Group) authority() error {
	svc := g.svc.Load()
	if svc == nil {
		return errors.New("no raft voter")
	}
	if err := svc.AwaitLease(2 * g.leaseDuration()); err != nil {
		return err
	}
	if m := g.viewMaster.Load(); m == nil || *m != g.cfg.Self {
		master := ""
		if m != nil {
			master = *m
		}
		return fmt.Errorf("the view names %q master", master)
	}
	return nil
}

func (g *Group) leaseDuration() time.Duration {
	if g.cfg.LeaseDuration > 0 {
		return g.cfg.LeaseDuration
	}
	return time.Second
}

// fence stops confirming and delivering at once: every session this core
// serves loses its broker side (the front's own sessions move to the next
// master, legs of other fronts are closed so those fronts move theirs),
// and new sessions go to whichever master the view names.
func (g *Group) fence(reason string) {
	g.roleMu.Lock()
	g.serving = false
	srv := g.srv
	g.roleMu.Unlock()
	g.log.Warn().Str("reason", reason).Msg("fenced: this node stops confirming and delivering")
	if srv != nil {
		srv.SetRoute(proxy.Route{Core: masterCore{g}})
		n := srv.DropLegs()
		g.log.Info().Int("sessions", n).Msg("the fence dropped the sessions' broker side; they move to the new master")
	}
}

// moveSessions sends the front's new sessions to the master to; open
// sessions whose leg ends (their master is gone or fenced) end with it.
func (g *Group) moveSessions(to string) {
	g.roleMu.Lock()
	srv, m := g.srv, g.master
	serving := g.serving
	g.roleMu.Unlock()
	if srv == nil {
		return
	}
	if to == g.cfg.Self && serving && m != nil {
		srv.SetRoute(g.localRoute(m))
	} else {
		srv.SetRoute(proxy.Route{Core: masterCore{g}})
	}
	// Sessions whose leg goes to the old master over a peer link would
	// wait for it while it is frozen or cut off (its socket stays open):
	// they move now, or close with 320 and their clients reconnect.
	if n := srv.DropRemoteLegs(); n > 0 {
		g.log.Info().Int("sessions", n).Str("master", to).Msg("the master changed: sessions served through the old master leave it")
	}
}

// closeCore ends this node's mastership: its Master stops.
func (g *Group) closeCore() {
	g.roleMu.Lock()
	m, stop := g.master, g.masterStop
	g.master, g.masterStop, g.serving = nil, nil, false
	g.roleMu.Unlock()
	if stop != nil {
		close(stop)
	}
	if m != nil {
		m.Close()
		t := m.Catalog()
		g.roleMu.Lock()
		g.heldTopo = &t
		g.roleMu.Unlock()
	}
}

// resync starts this incarnation as an empty mirror: a new Mirror, which
// discards what the broker holds of a queue when the master declares it
// here, and a new Follower. A mirror that never applied an op is kept.
func (g *Group) resync(inc uint64) {
	g.roleMu.Lock()
	defer g.roleMu.Unlock()
	if g.apply != nil && !g.apply.Used() && g.mir != nil && !g.mir.Closed() {
		return
	}
	if g.apply != nil {
		g.apply.Stop()
	}
	old := g.mir
	mir, err := replicate.NewMirror(context.Background(), replicate.MirrorConfig{
		BrokerURL: g.cfg.BrokerURL, Mirrored: g.mirrored, Policies: g.cfg.Policies, Self: g.cfg.Self, Stored: g.stored,
		Logger: g.log.With().Str("part", "mirror").Logger(),
	})
	if err != nil {
		g.log.Error().Err(err).Msg("cannot start an empty mirror")
		return
	}
	g.mir = mir
	f := replicate.NewFollower(replicate.FollowerConfig{Mirror: mir, Ring: g.node, Self: g.cfg.Self, Logger: g.log})
	g.apply = f
	g.log.Info().Uint64("incarnation", inc).Msg("mirroring from empty: the master's sync brings the old messages")
	// The master declares its queues to the new mirror again (a member
	// that stays in the view is no newcomer to it).
	g.background(func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := f.ReportFresh(ctx); err != nil && ctx.Err() == nil {
			g.log.Warn().Err(err).Msg("could not tell the master that this mirror starts from empty")
		}
	})
	if old != nil {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			old.Close()
		}()
	}
}

// Requests to the raft leader (membership from any node): on the leader
// they are applied at once, elsewhere sent over the peer link.
type leaderRequest struct {
	Kind        string `json:"kind"`
	Boot        string `json:"boot,omitempty"` // join: the asking process
	Incarnation uint64 `json:"incarnation,omitempty"`
	Target      string `json:"target,omitempty"`
	IfEpoch     uint64 `json:"if_epoch,omitempty"`
	// Queue, IDs, Mirrors and Forget: a queue's synced set and placement
	// (QueueKey → member IDs).
	Queue   string   `json:"queue,omitempty"`
	IDs     []string `json:"ids,omitempty"`
	Mirrors []string `json:"mirrors,omitempty"`
	Forget  bool     `json:"forget,omitempty"`
}

const (
	reqJoin     = "join"
	reqLeave    = "leave"
	reqHandover = "handover"
	reqSynced   = "synced"
	// reqTransfer goes to the master, not the leader: TransferMaster.
	reqTransfer = "transfer"
)

// toLeader has the raft leader apply req for this node.
func (g *Group) toLeader(ctx context.Context, req leaderRequest) (failover.View, error) {
	svc := g.svc.Load()
	if svc.IsLeader() {
		return g.applyRequest(ctx, g.cfg.Self, req)
	}
	_, leader := svc.Leader()
	if leader == "" {
		return failover.View{}, errors.New("no raft leader known")
	}
	b, err := json.Marshal(req)
	if err != nil {
		return failover.View{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ans, err := g.links.Request(ctx, leader, b)
	if err != nil {
		return failover.View{}, err
	}
	var v failover.View
	if err := json.Unmarshal(ans, &v); err != nil {
		return failover.View{}, fmt.Errorf("leader's answer: %w", err)
	}
	return v, nil
}

// serveRequest answers a peer's request on the leader (peerlink.Handler).
func (g *Group) serveRequest(ctx context.Context, peer string, body []byte) ([]byte, error) {
	var req leaderRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, fmt.Errorf("bad request: %w", err)
	}
	if req.Kind == reqTransfer {
		v, err := g.transferMaster(ctx, req.Target, true)
		if err != nil {
			return nil, err
		}
		return json.Marshal(v)
	}
	if !g.svc.Load().IsLeader() {
		return nil, failover.ErrNotLeader
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v, err := g.applyRequest(ctx, peer, req)
	if err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// applyRequest turns a node's request into a raft command, on the leader.
// A node may only change its own membership; a handover is asked by the
// master.
func (g *Group) applyRequest(ctx context.Context, from string, req leaderRequest) (failover.View, error) {
	svc := g.svc.Load()
	v := svc.View()
	promote := g.cfg.PromoteUnsynced
	switch req.Kind {
	case reqJoin:
		p, ok := g.peer(from)
		if !ok {
			return v, fmt.Errorf("%q is not a configured peer", from)
		}
		// While the group forms, peers join in bootstrap order, so the
		// first one is the first master.
		if k := len(v.Members); v.Epoch == uint64(k) && k < len(g.cfg.Peers) && g.cfg.Peers[k].ID != from && g.formingPrefix(v) {
			return v, fmt.Errorf("the group is forming: %s joins first", g.cfg.Peers[k].ID)
		}
		if m, ok := v.Member(from); ok && req.Boot != "" && m.Boot == req.Boot {
			return v, nil // admitted already: a repeated request
		}
		return svc.Apply(ctx, failover.Command{Kind: failover.CmdJoin, IfEpoch: v.Epoch,
			Member: failover.Member{ID: p.ID, GMAddr: p.GMAddr, RaftAddr: p.RaftAddr, Boot: req.Boot}, PromoteUnsynced: promote})
	case reqLeave:
		m, ok := v.Member(from)
		if !ok || m.JoinEpoch != req.Incarnation {
			return v, nil // that incarnation is gone already
		}
		if len(v.Members) == 1 {
			return v, errors.New("the last member does not leave")
		}
		return svc.Apply(ctx, failover.Command{Kind: failover.CmdRemove, IfEpoch: v.Epoch, IDs: []string{from}, PromoteUnsynced: promote})
	case reqHandover:
		if v.Master != from {
			return v, fmt.Errorf("%q is not the master", from)
		}
		if req.IfEpoch != 0 && req.IfEpoch != v.Epoch {
			return v, failover.ErrStaleEpoch
		}
		target := req.Target
		if target == "" {
			others := v
			others.Members = nil
			for _, m := range v.Members {
				if m.ID != from {
					others.Members = append(others.Members, m)
				}
			}
			target = failover.Elect(others, nil, false).Master
			if target == "" {
				return v, errors.New("no synced mirror to hand over to")
			}
		}
		return svc.Apply(ctx, failover.Command{Kind: failover.CmdHandover, IfEpoch: v.Epoch, IDs: []string{target}})
	case reqSynced:
		if v.Master != from {
			return v, fmt.Errorf("%q is not the master: only the master's synced sets are recorded", from)
		}
		if req.Forget {
			return svc.Apply(ctx, failover.Command{Kind: failover.CmdForgetSynced, Queue: req.Queue})
		}
		return svc.Apply(ctx, failover.Command{Kind: failover.CmdSetSynced, Queue: req.Queue, IDs: req.IDs, Mirrors: req.Mirrors})
	}
	return v, fmt.Errorf("unknown request %q", req.Kind)
}

func (g *Group) peer(id string) (Peer, bool) {
	for _, p := range g.cfg.Peers {
		if p.ID == id {
			return p, true
		}
	}
	return Peer{}, false
}

// formingPrefix: the view holds exactly the first peers in bootstrap order.
func (g *Group) formingPrefix(v failover.View) bool {
	for i, m := range v.Members {
		if i >= len(g.cfg.Peers) || m.ID != g.cfg.Peers[i].ID {
			return false
		}
	}
	return true
}
