package failover

import (
	"fmt"
	"slices"
	"time"
)

// Role is one node's part in its group — joining, mirror, promoting,
// master, fenced, stepping down, left — as a deterministic state machine in
// the manner of etcd's rawnode: its owner (the driver) reports what happened
// through the input methods, and each returns the actions to carry out, in
// order. It reads no clock (inputs carry the time), starts no goroutine and
// does no I/O, so a seed replays a whole group's failover (role_sim_test.go).
// It is not safe for concurrent use.
//
// The driver must:
//   - call Tick often (well within the lease) with the lease as it holds at
//     that instant: valid only while this node is in touch with a raft
//     majority and has applied every view the leader committed before that
//     contact (hashicorp/raft: LastContact within the lease, or leader, and
//     AppliedIndex caught up with the commit index it heard);
//   - pass every committed view (ViewCommitted; replays and duplicates are
//     fine: older epochs are ignored), the broker probe's verdicts
//     (BrokerHealth, starting with the first), the answer to a join
//     (Joined), and completions of the actions that report one
//     (TailApplied, Released, SessionsMoved);
//   - carry out actions in order, and still check the lease itself before
//     every confirm and delivery while the core serves (the role only sees
//     the lease at Tick).
type Role struct {
	cfg    RoleConfig
	now    time.Time
	view   View
	seen   bool // a view was committed
	lease  bool
	health BrokerHealth

	inc      uint64 // incarnation (JoinEpoch) Joined admitted; 0 when none
	retired  uint64 // highest incarnation given up: a Joined at or below it is stale
	joinAt   time.Time
	joinSent bool
	leaveAt  time.Time
	leaveWhy string

	core      coreState
	coreSince uint64 // MasterEpoch of the mastership the core serves

	promo promotion
	// dirty: the broker does not hold this incarnation's mirror contents
	// (a new process, a dropped incarnation, released copies, a served
	// core). A dirty member resyncs before it is a mirror and may become
	// master only when the view that admitted it named it (the group's
	// first member).
	dirty bool

	sessionsTo string // where ActMoveSessions last pointed the front's sessions
	moving     bool   // sessions are moving off a held core
	moveEpoch  uint64

	step     handover
	shutdown bool
	left     bool
}

// RoleConfig configures a Role.
type RoleConfig struct {
	// Self is this node's member ID.
	Self string
	// HandoverTimeout bounds a graceful handover (ha-promote-on-shutdown:
	// when-synced): a master that asked to hand over and is still master
	// after it gives up (default 10s). A handover cancels, a shutdown
	// leaves anyway.
	HandoverTimeout time.Duration
	// Retry is how often a request to the leader that has not taken
	// effect (join, leave, handover) is repeated (default 1s).
	Retry time.Duration
}

// RoleState is where a node stands in its group.
type RoleState int

// The role states. The zero value is RoleJoining.
const (
	// RoleJoining: not a member of the view (yet, or any more): it asks
	// to join (ActJoin) while its broker is healthy.
	RoleJoining RoleState = iota
	// RoleMirror: a member; its broker holds copies of the mirrored queues.
	RoleMirror
	// RolePromoting: a view named it master; it applies the departed
	// master's tail, releases its held copies, then opens the core while
	// its lease is valid.
	RolePromoting
	// RoleMaster: its core serves clients (confirms and delivers).
	RoleMaster
	// RoleFenced: still master by the latest view it knows, but it stopped
	// serving (its lease lapsed); it resumes when the lease is back.
	RoleFenced
	// RoleSteppingDown: a master that stopped serving to hand over, or
	// whose mastership ended: it moves its sessions to the new master,
	// then closes its core.
	RoleSteppingDown
	// RoleLeft: shut down; no input changes it any more.
	RoleLeft
)

var roleStateNames = [...]string{"joining", "mirror", "promoting", "master", "fenced", "stepping-down", "left"}

func (s RoleState) String() string {
	if s >= 0 && int(s) < len(roleStateNames) {
		return roleStateNames[s]
	}
	return fmt.Sprintf("RoleState(%d)", int(s))
}

// BrokerHealth is the local broker probe's verdict.
type BrokerHealth int

// Broker health verdicts. Until the first verdict the role does nothing.
const (
	BrokerUnknown BrokerHealth = iota
	BrokerOK
	BrokerDown   // connection refused or closed
	BrokerFrozen // connected but not answering within the probe's deadline
)

func (h BrokerHealth) String() string {
	switch h {
	case BrokerOK:
		return "ok"
	case BrokerDown:
		return "down"
	case BrokerFrozen:
		return "frozen"
	}
	return "unknown"
}

// Reasons carried by ActFence and ActLeave.
const (
	ReasonLease        = "lease lapsed"
	ReasonBrokerDown   = "broker down"
	ReasonBrokerFrozen = "broker frozen"
	ReasonNotMaster    = "the view names another master"
	ReasonDropped      = "dropped from the view"
	ReasonHandover     = "handing over"
	ReasonShutdown     = "shutting down"
	ReasonStale        = "named master without a mirror's contents"
)

// Action is one thing the driver must do. The concrete types are the Act*
// structs of this file.
type Action interface{ action() }

type (
	// ActJoin: ask the leader to admit this node as a new incarnation
	// (failover Join); report the incarnation's JoinEpoch with Joined.
	ActJoin struct{}
	// ActLeave: ask the leader to remove Incarnation of this node (only
	// that incarnation: a later one must stay).
	ActLeave struct {
		Incarnation uint64
		Reason      string
	}
	// ActApplyTail: apply every op the departed master sent before the
	// view at epoch Barrier (the tail the survivors agree it sent; gm
	// delivers it), then report TailApplied(Barrier).
	ActApplyTail struct{ Barrier uint64 }
	// ActReleaseHeld: close the shadow consumers so the broker requeues
	// every held copy in order, then report Released(Barrier).
	ActReleaseHeld struct{ Barrier uint64 }
	// ActOpenCore: serve clients as the master of the view at Epoch (open
	// or resume the core). Confirms and deliveries still check the lease.
	ActOpenCore struct{ Epoch uint64 }
	// ActFence: stop confirming and delivering now. The core keeps its
	// sessions (they may still move); it serves again only after another
	// ActOpenCore.
	ActFence struct{ Reason string }
	// ActMoveSessions: move the front's sessions to the core of To (this
	// node when To is Self), as of the view at Epoch; report
	// SessionsMoved(Epoch).
	ActMoveSessions struct {
		To    string
		Epoch uint64
	}
	// ActCloseCore: close the core's upstream connections.
	ActCloseCore struct{}
	// ActResync: discard what the local broker holds for mirrored queues
	// and start as an empty mirror of incarnation Incarnation (sync
	// brings old messages back).
	ActResync struct{ Incarnation uint64 }
	// ActRequestHandover: ask the leader to make Target master
	// (CmdHandover with IfEpoch), "" letting the leader choose a synced
	// member; Target = this node asks to stay master, which voids any
	// handover decided at IfEpoch.
	ActRequestHandover struct {
		Target  string
		IfEpoch uint64
	}
)

func (ActJoin) action()            {}
func (ActLeave) action()           {}
func (ActApplyTail) action()       {}
func (ActReleaseHeld) action()     {}
func (ActOpenCore) action()        {}
func (ActFence) action()           {}
func (ActMoveSessions) action()    {}
func (ActCloseCore) action()       {}
func (ActResync) action()          {}
func (ActRequestHandover) action() {}

type coreState uint8

const (
	coreClosed  coreState = iota
	coreServing           // open and serving
	coreHeld              // open, not serving (fenced); sessions still attached
)

type promotion struct {
	on           bool
	since        uint64 // MasterEpoch being promoted to
	barrier      uint64 // epoch of the view that named this node master
	tail         bool
	releaseAsked bool
	released     bool
}

type handover struct {
	on       bool
	target   string
	since    time.Time
	giveUp   bool // timed out: asking to stay master instead
	sent     bool
	sentAt   time.Time
	sentView uint64 // IfEpoch of the requests sent
}

// NewRole returns a role in RoleJoining. It acts once told its broker's
// health.
func NewRole(cfg RoleConfig) *Role {
	if cfg.HandoverTimeout <= 0 {
		cfg.HandoverTimeout = 10 * time.Second
	}
	if cfg.Retry <= 0 {
		cfg.Retry = time.Second
	}
	// A new process does not know what its broker holds.
	return &Role{cfg: cfg, dirty: true}
}

// State returns the role's state.
func (r *Role) State() RoleState {
	switch {
	case r.left:
		return RoleLeft
	case r.core == coreServing:
		return RoleMaster
	case r.core == coreHeld && r.ownsCore() && !r.step.on:
		return RoleFenced
	case r.core == coreHeld:
		return RoleSteppingDown
	case r.member() && r.named():
		return RolePromoting
	case r.member():
		return RoleMirror
	}
	return RoleJoining
}

// Serving reports whether the core serves (RoleMaster).
func (r *Role) Serving() bool { return r.core == coreServing }

// Epoch is the epoch of the latest view the role accepted.
func (r *Role) Epoch() uint64 { return r.view.Epoch }

// Incarnation is this node's JoinEpoch in the view, 0 when not a member.
func (r *Role) Incarnation() uint64 {
	if r.member() {
		return r.inc
	}
	return 0
}

// View returns the latest view the role accepted.
func (r *Role) View() View { return r.view.clone() }

// ViewCommitted reports a committed view. A view older than the latest is
// ignored (epochs never go backwards).
func (r *Role) ViewCommitted(v View) []Action {
	if r.left || r.seen && v.Epoch < r.view.Epoch {
		return nil
	}
	r.view, r.seen = v.clone(), true
	return r.reconcile()
}

// Joined reports that the leader admitted this node as incarnation
// joinEpoch (the answer to ActJoin). A stale answer is ignored.
func (r *Role) Joined(joinEpoch uint64) []Action {
	if r.left || joinEpoch <= r.retired || joinEpoch <= r.inc {
		return nil
	}
	if r.inc != 0 {
		r.retire()
	}
	r.inc, r.leaveWhy = joinEpoch, ""
	return r.reconcile()
}

// Tick reports the time and whether the lease holds at now.
func (r *Role) Tick(now time.Time, leaseValid bool) []Action {
	if r.left {
		return nil
	}
	r.now, r.lease = now, leaseValid
	if r.step.on && !r.step.giveUp && now.Sub(r.step.since) >= r.cfg.HandoverTimeout {
		r.step.giveUp, r.step.sent = true, false
	}
	return r.reconcile()
}

// BrokerHealth reports the local broker probe's verdict.
func (r *Role) BrokerHealth(h BrokerHealth) []Action {
	if r.left {
		return nil
	}
	r.health = h
	return r.reconcile()
}

// TailApplied reports that the tail up to barrier is applied locally.
func (r *Role) TailApplied(barrier uint64) []Action {
	if r.left || !r.promo.on || r.promo.barrier != barrier || r.promo.tail {
		return nil
	}
	r.promo.tail = true
	return r.reconcile()
}

// Released reports that the held copies are released (requeued) on the
// local broker for the promotion at barrier.
func (r *Role) Released(barrier uint64) []Action {
	if r.left || !r.promo.on || r.promo.barrier != barrier || !r.promo.releaseAsked || r.promo.released {
		return nil
	}
	r.promo.released = true
	return r.reconcile()
}

// SessionsMoved reports that the move asked at epoch is done.
func (r *Role) SessionsMoved(epoch uint64) []Action {
	if r.left || !r.moving || r.moveEpoch != epoch {
		return nil
	}
	r.moving = false
	return r.reconcile()
}

// HandoverRequested asks a serving master to hand over to target ("" lets
// the leader choose a synced member): it stops serving at once and asks
// the leader; if no view names another master within HandoverTimeout it
// asks to stay and resumes. Ignored unless the core serves.
func (r *Role) HandoverRequested(target string, now time.Time) []Action {
	if r.left || r.core != coreServing || r.step.on || r.shutdown || target == r.cfg.Self {
		return nil
	}
	r.now = now
	r.step = handover{on: true, target: target, since: now}
	return r.reconcile()
}

// Shutdown starts a controlled shutdown: a serving master with other
// members first hands over (bounded by HandoverTimeout), then the node
// closes its core, leaves the view and ends in RoleLeft.
func (r *Role) Shutdown(now time.Time) []Action {
	if r.left || r.shutdown {
		return nil
	}
	r.now, r.shutdown = now, true
	if r.core == coreServing && !r.step.on && len(r.view.Members) > 1 {
		r.step = handover{on: true, since: now}
	}
	return r.reconcile()
}

func (r *Role) member() bool {
	if r.inc == 0 {
		return false
	}
	m, ok := r.view.Member(r.cfg.Self)
	return ok && m.JoinEpoch == r.inc
}

func (r *Role) named() bool { return r.member() && r.view.Master == r.cfg.Self }

// ownsCore: the open core belongs to the mastership the view still names.
func (r *Role) ownsCore() bool { return r.named() && r.view.MasterEpoch == r.coreSince }

// retire gives up the current incarnation: its contents are stale now.
func (r *Role) retire() {
	r.retired = max(r.retired, r.inc)
	r.inc = 0
	r.leaveWhy = ""
	r.dirty = true
	r.promo = promotion{}
	r.step = handover{}
}

// reconcile moves the role from what it last did towards what its inputs
// now call for, returning the actions in the order to carry them out. It
// repeats its pass until a pass has nothing to add (each pass is
// idempotent), so one step enabling another — a held core closed, then a
// promotion — happens within one input.
func (r *Role) reconcile() []Action {
	var acts []Action
	for range 4 {
		n := len(acts)
		acts = r.pass(acts)
		if len(acts) == n || r.left {
			break
		}
	}
	return acts
}

// pass appends one round of actions to acts. Stopping to serve always
// comes first.
func (r *Role) pass(acts []Action) []Action {
	emit := func(a Action) { acts = append(acts, a) }
	healthy := r.health == BrokerOK
	sick := r.health == BrokerDown || r.health == BrokerFrozen

	// Membership: a view at or past our incarnation's epoch that lacks it
	// dropped us.
	dropped := false
	if r.inc != 0 && r.view.Epoch >= r.inc && !r.member() {
		r.retire()
		dropped = true
	}

	// A handover ends when the view names someone else; requests sent at
	// an older epoch are void (IfEpoch) once a newer view names us still.
	if r.step.on {
		switch {
		case !r.ownsCore():
			r.step = handover{}
		case r.step.sent && r.view.Epoch > r.step.sentView:
			if r.step.giveUp {
				r.step = handover{} // kept: serve again below
			} else {
				r.step.sent = false // ask again at the new epoch
			}
		}
	}

	// 1. Stop serving before anything else.
	if r.core == coreServing {
		reason := ""
		switch {
		case !healthy:
			reason = healthReason(r.health)
		case dropped || !r.member():
			reason = ReasonDropped
		case !r.ownsCore():
			reason = ReasonNotMaster
		case !r.lease:
			reason = ReasonLease
		case r.shutdown:
			reason = ReasonShutdown
		case r.step.on:
			reason = ReasonHandover
		}
		if reason != "" {
			emit(ActFence{Reason: reason})
			r.core = coreHeld
		}
	}

	// 2. A dead or frozen broker: step down and tell the leader.
	if sick && r.member() {
		r.leave(emit, healthReason(r.health))
	}
	r.repeatLeave(emit)

	// 3. Handover requests, repeated until a view decides. A shutdown that
	// gave up waiting leaves instead of asking to stay.
	if r.step.on && (!r.shutdown || !r.step.giveUp) && (!r.step.sent || r.now.Sub(r.step.sentAt) >= r.cfg.Retry) {
		target := r.step.target
		if r.step.giveUp {
			target = r.cfg.Self
		}
		emit(ActRequestHandover{Target: target, IfEpoch: r.view.Epoch})
		r.step.sent, r.step.sentAt, r.step.sentView = true, r.now, r.view.Epoch
	}

	// 4. Promotion, then serving; or resuming a fenced core.
	switch {
	case r.shutdown:
		r.promo = promotion{}
	case r.named() && r.core == coreClosed:
		since := r.view.MasterEpoch
		if !r.promo.on || r.promo.since != since {
			if r.dirty && since != r.inc {
				// Our broker does not hold a mirror's contents (someone else
				// may have served since): let the leader elect another. A
				// node named master by the view that admitted it is the
				// group's first member: its broker is all there is.
				r.leave(emit, ReasonStale)
				break
			}
			r.promo = promotion{on: true, since: since, barrier: r.view.Epoch}
			emit(ActApplyTail{Barrier: r.promo.barrier})
		}
		if r.promo.tail && !r.promo.releaseAsked {
			emit(ActReleaseHeld{Barrier: r.promo.barrier})
			r.promo.releaseAsked = true
			r.dirty = true
		}
		if r.promo.released && r.lease && healthy {
			emit(ActOpenCore{Epoch: r.view.Epoch})
			r.core, r.coreSince = coreServing, since
			r.promo = promotion{}
		}
	case r.core == coreHeld && r.ownsCore() && !r.step.on && r.lease && healthy:
		emit(ActOpenCore{Epoch: r.view.Epoch})
		r.core = coreServing
	case !r.named():
		r.promo = promotion{}
	}

	// 5. Sessions follow the master: ours while we serve, else the view's.
	target := ""
	switch {
	case r.core == coreServing:
		target = r.cfg.Self
	case r.view.Master != "" && r.view.Master != r.cfg.Self:
		target = r.view.Master
	}
	if target != "" && target != r.sessionsTo {
		emit(ActMoveSessions{To: target, Epoch: r.view.Epoch})
		r.sessionsTo = target
		if r.core == coreHeld {
			r.moving, r.moveEpoch = true, r.view.Epoch
		}
	}

	// 6. A held core that is no longer ours — or whose node shuts down
	// with no handover pending — closes once its sessions moved (at once
	// when there is no master to move them to).
	shutdownNow := r.shutdown && (!r.step.on || r.step.giveUp)
	if r.core == coreHeld && (!r.ownsCore() || shutdownNow) && !r.moving {
		emit(ActCloseCore{})
		r.core = coreClosed
		if r.sessionsTo == r.cfg.Self {
			r.sessionsTo = ""
		}
	}

	// 7. Shutdown completes with the core closed: leave, and stop.
	if shutdownNow && r.core == coreClosed {
		if r.member() {
			r.leave(emit, ReasonShutdown)
		}
		r.left = true
		return acts
	}

	// 8. A member that is not master mirrors: from empty if its broker's
	// contents are not this incarnation's.
	if r.member() && !r.named() && r.core == coreClosed && r.dirty {
		emit(ActResync{Incarnation: r.inc})
		r.dirty = false
	}

	// 9. Not a member: ask to join while the broker is healthy.
	if r.inc == 0 && healthy && !r.shutdown && (!r.joinSent || r.now.Sub(r.joinAt) >= r.cfg.Retry) {
		emit(ActJoin{})
		r.joinSent, r.joinAt = true, r.now
	}
	return acts
}

// leave asks the leader to remove the current incarnation and gives it up.
func (r *Role) leave(emit func(Action), reason string) {
	emit(ActLeave{Incarnation: r.inc, Reason: reason})
	r.retire()
	r.leaveAt, r.leaveWhy = r.now, reason
}

// repeatLeave repeats a leave the view has not applied yet.
func (r *Role) repeatLeave(emit func(Action)) {
	if r.inc != 0 || r.retired == 0 || r.leaveWhy == "" || r.now.Sub(r.leaveAt) < r.cfg.Retry {
		return
	}
	if !slices.ContainsFunc(r.view.Members, func(m Member) bool { return m.ID == r.cfg.Self && m.JoinEpoch == r.retired }) {
		return
	}
	emit(ActLeave{Incarnation: r.retired, Reason: r.leaveWhy})
	r.leaveAt = r.now
}

func healthReason(h BrokerHealth) string {
	if h == BrokerFrozen {
		return ReasonBrokerFrozen
	}
	return ReasonBrokerDown
}
