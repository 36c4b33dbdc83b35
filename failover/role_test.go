package failover

import (
	"reflect"
	"testing"
	"time"
)

var roleT0 = time.Unix(1000, 0)

func mem(id string, join uint64) Member { return Member{ID: id, JoinEpoch: join} }

// vw is a view at epoch naming master (installed at since).
func vw(epoch uint64, master string, since uint64, members ...Member) View {
	return View{Epoch: epoch, Master: master, MasterEpoch: since, Members: members}
}

// roleRig drives one Role ("a") through a script and checks each step.
type roleRig struct {
	t   *testing.T
	r   *Role
	now time.Time
}

func newRoleRig(t *testing.T) *roleRig {
	return &roleRig{t: t, now: roleT0, r: NewRole(RoleConfig{Self: "a", Retry: time.Second, HandoverTimeout: 5 * time.Second})}
}

// do checks that an input returned want and left the role in state.
func (g *roleRig) do(what string, got []Action, state RoleState, want ...Action) {
	g.t.Helper()
	if len(want) == 0 {
		want = nil
	}
	if !reflect.DeepEqual(got, want) {
		g.t.Fatalf("%s:\n got  %#v\n want %#v", what, got, want)
	}
	if s := g.r.State(); s != state {
		g.t.Fatalf("%s: state %v, want %v", what, s, state)
	}
}

func (g *roleRig) tick(d time.Duration, lease bool) []Action {
	g.now = g.now.Add(d)
	return g.r.Tick(g.now, lease)
}

// mirror brings "a" into view 2 as a mirror of b (incarnation 2).
func (g *roleRig) mirror() {
	g.t.Helper()
	g.do("tick", g.tick(0, true), RoleJoining)
	g.do("broker ok", g.r.BrokerHealth(BrokerOK), RoleJoining, ActJoin{})
	g.do("joined", g.r.Joined(2), RoleJoining)
	g.do("admitted", g.r.ViewCommitted(vw(2, "b", 1, mem("b", 1), mem("a", 2))), RoleMirror,
		ActMoveSessions{To: "b", Epoch: 2}, ActResync{Incarnation: 2})
}

// master makes the mirror "a" master at view 3 (b gone).
func (g *roleRig) master() {
	g.t.Helper()
	g.mirror()
	g.do("named", g.r.ViewCommitted(vw(3, "a", 3, mem("a", 2), mem("c", 3))), RolePromoting, ActApplyTail{Barrier: 3})
	g.do("tail", g.r.TailApplied(3), RolePromoting, ActReleaseHeld{Barrier: 3})
	g.do("released", g.r.Released(3), RoleMaster, ActOpenCore{Epoch: 3}, ActMoveSessions{To: "a", Epoch: 3})
}

func TestRoleJoining(t *testing.T) {
	g := newRoleRig(t)
	g.do("no verdict yet", g.tick(0, false), RoleJoining)
	g.do("replayed view of an old incarnation", g.r.ViewCommitted(vw(1, "a", 1, mem("a", 1))), RoleJoining)
	g.do("broker down", g.r.BrokerHealth(BrokerDown), RoleJoining)
	g.do("broker ok: join", g.r.BrokerHealth(BrokerOK), RoleJoining, ActJoin{})
	g.do("no repeat within Retry", g.tick(500*time.Millisecond, false), RoleJoining)
	g.do("repeat after Retry", g.tick(500*time.Millisecond, false), RoleJoining, ActJoin{})
	g.do("answer before the view", g.r.Joined(4), RoleJoining)
	g.do("no join while admitted", g.tick(2*time.Second, false), RoleJoining)
	g.do("older view ignored", g.r.ViewCommitted(vw(0, "", 0)), RoleJoining)
	g.do("the view of the join", g.r.ViewCommitted(vw(4, "b", 2, mem("b", 2), mem("a", 4))), RoleMirror,
		ActMoveSessions{To: "b", Epoch: 4}, ActResync{Incarnation: 4})
	if g.r.Incarnation() != 4 {
		t.Fatalf("incarnation %d", g.r.Incarnation())
	}
}

func TestRoleAdmission(t *testing.T) {
	t.Run("as mirror resyncs", func(t *testing.T) {
		g := newRoleRig(t)
		g.mirror()
		if g.r.Incarnation() != 2 || g.r.Epoch() != 2 {
			t.Fatalf("inc %d epoch %d", g.r.Incarnation(), g.r.Epoch())
		}
	})
	t.Run("sole member is master without resync", func(t *testing.T) {
		g := newRoleRig(t)
		g.r.BrokerHealth(BrokerOK)
		g.r.Joined(1)
		g.do("first view", g.r.ViewCommitted(vw(1, "a", 1, mem("a", 1))), RolePromoting, ActApplyTail{Barrier: 1})
		g.do("tail", g.r.TailApplied(1), RolePromoting, ActReleaseHeld{Barrier: 1})
		g.do("released, no lease yet", g.r.Released(1), RolePromoting)
		g.do("lease", g.tick(0, true), RoleMaster, ActOpenCore{Epoch: 1}, ActMoveSessions{To: "a", Epoch: 1})
	})
}

func TestRolePromotion(t *testing.T) {
	g := newRoleRig(t)
	g.mirror()
	g.do("other master: sessions follow", g.r.ViewCommitted(vw(3, "c", 3, mem("a", 2), mem("c", 3))), RoleMirror,
		ActMoveSessions{To: "c", Epoch: 3})
	g.do("named", g.r.ViewCommitted(vw(4, "a", 4, mem("a", 2))), RolePromoting, ActApplyTail{Barrier: 4})
	g.do("release before tail ignored", g.r.Released(4), RolePromoting)
	g.do("other barrier ignored", g.r.TailApplied(3), RolePromoting)
	g.do("same master, newer view", g.r.ViewCommitted(vw(5, "a", 4, mem("a", 2), mem("d", 5))), RolePromoting)
	g.do("tail", g.r.TailApplied(4), RolePromoting, ActReleaseHeld{Barrier: 4})
	g.do("lease lapses", g.tick(0, false), RolePromoting)
	g.do("released without lease", g.r.Released(4), RolePromoting)
	g.do("broker frozen: leave", g.r.BrokerHealth(BrokerFrozen), RoleJoining,
		ActLeave{Incarnation: 2, Reason: ReasonBrokerFrozen})
	g.do("lease back: nothing to open", g.tick(0, true), RoleJoining)

	g = newRoleRig(t)
	g.mirror()
	g.r.ViewCommitted(vw(3, "a", 3, mem("a", 2), mem("c", 3)))
	g.r.TailApplied(3)
	g.do("another master before opening: released copies resync", g.r.ViewCommitted(vw(4, "c", 4, mem("a", 2), mem("c", 3))), RoleMirror,
		ActMoveSessions{To: "c", Epoch: 4}, ActResync{Incarnation: 2})
	g.do("late release ignored", g.r.Released(3), RoleMirror)
}

func TestRoleMasterFences(t *testing.T) {
	t.Run("lease lapses and returns", func(t *testing.T) {
		g := newRoleRig(t)
		g.master()
		g.do("lease lapses", g.tick(time.Second, false), RoleFenced, ActFence{Reason: ReasonLease})
		g.do("still no lease", g.tick(time.Second, false), RoleFenced)
		g.do("newer view, same mastership", g.r.ViewCommitted(vw(4, "a", 3, mem("a", 2))), RoleFenced)
		g.do("lease back", g.tick(time.Second, true), RoleMaster, ActOpenCore{Epoch: 4})
	})
	t.Run("broker down", func(t *testing.T) {
		g := newRoleRig(t)
		g.master()
		g.do("down", g.r.BrokerHealth(BrokerDown), RoleJoining,
			ActFence{Reason: ReasonBrokerDown}, ActLeave{Incarnation: 2, Reason: ReasonBrokerDown}, ActCloseCore{})
		g.do("leave not applied yet: repeat after Retry", g.tick(time.Second, true), RoleJoining,
			ActLeave{Incarnation: 2, Reason: ReasonBrokerDown})
		g.do("dropped, c master", g.r.ViewCommitted(vw(4, "c", 4, mem("c", 3))), RoleJoining, ActMoveSessions{To: "c", Epoch: 4})
		g.do("no join while down", g.tick(time.Second, true), RoleJoining)
		g.do("broker back: rejoin", g.r.BrokerHealth(BrokerOK), RoleJoining, ActJoin{})
		g.do("stale answer", g.r.Joined(2), RoleJoining)
		g.r.Joined(5)
		g.do("readmitted: resync", g.r.ViewCommitted(vw(5, "c", 4, mem("c", 3), mem("a", 5))), RoleMirror, ActResync{Incarnation: 5})
	})
	t.Run("view names another master", func(t *testing.T) {
		g := newRoleRig(t)
		g.master()
		g.do("operator handover to c", g.r.ViewCommitted(vw(4, "c", 4, mem("a", 2), mem("c", 3))), RoleSteppingDown,
			ActFence{Reason: ReasonNotMaster}, ActMoveSessions{To: "c", Epoch: 4})
		g.do("old move ignored", g.r.SessionsMoved(3), RoleSteppingDown)
		g.do("moved", g.r.SessionsMoved(4), RoleMirror, ActCloseCore{}, ActResync{Incarnation: 2})
	})
	t.Run("dropped from the view", func(t *testing.T) {
		g := newRoleRig(t)
		g.master()
		g.tick(time.Second, true)
		g.do("dropped", g.r.ViewCommitted(vw(4, "c", 4, mem("c", 3))), RoleSteppingDown,
			ActFence{Reason: ReasonDropped}, ActMoveSessions{To: "c", Epoch: 4}, ActJoin{})
		g.r.Joined(5)
		g.do("readmitted while moving: no resync yet", g.r.ViewCommitted(vw(5, "c", 4, mem("c", 3), mem("a", 5))), RoleSteppingDown)
		g.do("moved", g.r.SessionsMoved(4), RoleMirror, ActCloseCore{}, ActResync{Incarnation: 5})
	})
	t.Run("older view ignored", func(t *testing.T) {
		g := newRoleRig(t)
		g.master()
		g.do("older", g.r.ViewCommitted(vw(2, "b", 1, mem("b", 1), mem("a", 2))), RoleMaster)
		if g.r.Epoch() != 3 {
			t.Fatalf("epoch went back to %d", g.r.Epoch())
		}
	})
	t.Run("fenced, then named again after another master", func(t *testing.T) {
		g := newRoleRig(t)
		g.master()
		g.do("lease lapses", g.tick(time.Second, false), RoleFenced, ActFence{Reason: ReasonLease})
		// Views 4 (c master) and 5 (a master again) while cut off: the
		// core is stale and so is the broker: step aside.
		g.do("named at a new mastership", g.r.ViewCommitted(vw(5, "a", 5, mem("a", 2), mem("c", 3))), RoleJoining,
			ActCloseCore{}, ActLeave{Incarnation: 2, Reason: ReasonStale}, ActJoin{})
	})
}

func TestRoleHandover(t *testing.T) {
	t.Run("completes", func(t *testing.T) {
		g := newRoleRig(t)
		g.master()
		if a := newRoleRig(t).r.HandoverRequested("c", g.now); a != nil {
			t.Fatalf("a role that does not serve hands over: %v", a)
		}
		g.do("to itself: ignored", g.r.HandoverRequested("a", g.now), RoleMaster)
		g.do("requested", g.r.HandoverRequested("c", g.now), RoleSteppingDown,
			ActFence{Reason: ReasonHandover}, ActRequestHandover{Target: "c", IfEpoch: 3})
		g.do("repeat after Retry", g.tick(time.Second, true), RoleSteppingDown, ActRequestHandover{Target: "c", IfEpoch: 3})
		g.do("handed over", g.r.ViewCommitted(vw(4, "c", 4, mem("a", 2), mem("c", 3))), RoleSteppingDown,
			ActMoveSessions{To: "c", Epoch: 4})
		g.do("moved", g.r.SessionsMoved(4), RoleMirror, ActCloseCore{}, ActResync{Incarnation: 2})
	})
	t.Run("a newer view voids the request", func(t *testing.T) {
		g := newRoleRig(t)
		g.master()
		g.r.HandoverRequested("", g.now)
		g.do("d joins", g.r.ViewCommitted(vw(4, "a", 3, mem("a", 2), mem("c", 3), mem("d", 4))), RoleSteppingDown,
			ActRequestHandover{Target: "", IfEpoch: 4})
	})
	t.Run("times out and stays", func(t *testing.T) {
		g := newRoleRig(t)
		g.master()
		g.r.HandoverRequested("c", g.now)
		g.do("gives up: asks to stay", g.tick(5*time.Second, true), RoleSteppingDown, ActRequestHandover{Target: "a", IfEpoch: 3})
		g.do("kept", g.r.ViewCommitted(vw(4, "a", 3, mem("a", 2), mem("c", 3))), RoleMaster, ActOpenCore{Epoch: 4})
	})
	t.Run("times out but the handover won", func(t *testing.T) {
		g := newRoleRig(t)
		g.master()
		g.r.HandoverRequested("c", g.now)
		g.tick(5*time.Second, true)
		g.do("c master", g.r.ViewCommitted(vw(4, "c", 4, mem("a", 2), mem("c", 3))), RoleSteppingDown,
			ActMoveSessions{To: "c", Epoch: 4})
	})
}

func TestRoleShutdown(t *testing.T) {
	t.Run("mirror", func(t *testing.T) {
		g := newRoleRig(t)
		g.mirror()
		g.do("shutdown", g.r.Shutdown(g.now), RoleLeft, ActLeave{Incarnation: 2, Reason: ReasonShutdown})
		g.do("after", g.r.ViewCommitted(vw(9, "a", 9, mem("a", 2))), RoleLeft)
		g.do("after", g.tick(time.Hour, true), RoleLeft)
	})
	t.Run("joining", func(t *testing.T) {
		g := newRoleRig(t)
		g.do("shutdown", g.r.Shutdown(g.now), RoleLeft)
	})
	t.Run("master hands over first", func(t *testing.T) {
		g := newRoleRig(t)
		g.master()
		g.do("shutdown", g.r.Shutdown(g.now), RoleSteppingDown,
			ActFence{Reason: ReasonShutdown}, ActRequestHandover{Target: "", IfEpoch: 3})
		g.do("handed over", g.r.ViewCommitted(vw(4, "c", 4, mem("a", 2), mem("c", 3))), RoleSteppingDown,
			ActMoveSessions{To: "c", Epoch: 4})
		g.do("moved", g.r.SessionsMoved(4), RoleLeft, ActCloseCore{}, ActLeave{Incarnation: 2, Reason: ReasonShutdown})
	})
	t.Run("master, nobody takes over", func(t *testing.T) {
		g := newRoleRig(t)
		g.master()
		g.r.Shutdown(g.now)
		g.do("gives up", g.tick(5*time.Second, true), RoleLeft, ActCloseCore{}, ActLeave{Incarnation: 2, Reason: ReasonShutdown})
	})
	t.Run("sole master", func(t *testing.T) {
		g := newRoleRig(t)
		g.master()
		g.r.ViewCommitted(vw(4, "a", 3, mem("a", 2)))
		g.do("shutdown", g.r.Shutdown(g.now), RoleLeft,
			ActFence{Reason: ReasonShutdown}, ActCloseCore{}, ActLeave{Incarnation: 2, Reason: ReasonShutdown})
	})
}

func TestRoleMirrorDroppedRejoins(t *testing.T) {
	g := newRoleRig(t)
	g.mirror()
	g.tick(time.Second, true)
	g.do("dropped", g.r.ViewCommitted(vw(3, "b", 1, mem("b", 1))), RoleJoining, ActJoin{})
	g.do("old incarnation's view again", g.r.ViewCommitted(vw(3, "b", 1, mem("b", 1), mem("a", 2))), RoleJoining)
	g.r.Joined(4)
	g.do("readmitted", g.r.ViewCommitted(vw(4, "b", 1, mem("b", 1), mem("a", 4))), RoleMirror, ActResync{Incarnation: 4})
	g.do("joined again (duplicate join)", g.r.Joined(6), RoleJoining)
	g.do("the duplicate's view", g.r.ViewCommitted(vw(6, "b", 1, mem("b", 1), mem("a", 6))), RoleMirror, ActResync{Incarnation: 6})
}

func TestRoleStateString(t *testing.T) {
	for s, want := range map[RoleState]string{RoleJoining: "joining", RoleSteppingDown: "stepping-down", RoleLeft: "left", RoleState(42): "RoleState(42)"} {
		if s.String() != want {
			t.Errorf("%d: %q, want %q", int(s), s.String(), want)
		}
	}
}
