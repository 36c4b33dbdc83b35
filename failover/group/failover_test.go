package group

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/mirrorproxy/mirrorproxy/failover"
	"github.com/mirrorproxy/mirrorproxy/replicate"
	"github.com/mirrorproxy/mirrorproxy/testenv"
)

// failoverScenario fills a mirrored queue through a mirror's front (total
// confirmed messages, the first acked ones consumed and acked through
// another front, and applied on every mirror), then injects fault on the
// master (node-0), waits for a survivor to serve as master, and checks:
// every confirmed message not acked at the old master is in the new
// master's queue, in order, redelivered (the new master held them as
// copies); fronts that survive serve publishes with confirms again, and
// the other survivor mirrors them.
func failoverScenario(t *testing.T, fault func(env *testenv.Group, s *sidecars)) (*testenv.Group, *sidecars, *Group) {
	env, s := startGroup(t, policy(t, "ha-all", `^ha\.`, map[string]any{"ha-mode": "all"}))
	const queue, total, acked = "ha.failover", 50, 10

	pub := channel(t, dial(t, "amqp://guest:guest@"+s.clients[1]+"/"))
	if _, err := pub.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := pub.Confirm(false); err != nil {
		t.Fatal(err)
	}
	var bodies []string
	for i := 1; i <= total; i++ {
		bodies = append(bodies, strconv.Itoa(i))
	}
	publishConfirmed(t, pub, "", queue, bodies...)
	cons := channel(t, dial(t, "amqp://guest:guest@"+s.clients[2]+"/"))
	for i := 1; i <= acked; i++ {
		m, ok, err := cons.Get(queue, false)
		if err != nil || !ok || string(m.Body) != strconv.Itoa(i) {
			t.Fatalf("get %d: %v %v %q", i, ok, err, m.Body)
		}
		if err := m.Ack(false); err != nil {
			t.Fatal(err)
		}
	}
	// An ack is not confirmed to the client: wait until the mirrors
	// applied them (a message acked just before a failover may come back).
	for _, g := range s.groups[1:] {
		waitFor(t, g.cfg.Self+" applying the acks", 30*time.Second, func() bool {
			return g.Mirror().Held("/", queue) == total-acked
		})
	}

	start := time.Now()
	fault(env, s)
	var master *Group
	waitFor(t, "a surviving node to serve as master", 30*time.Second, func() bool {
		for _, g := range s.groups[1:] {
			if g.IsMaster() {
				master = g
				return true
			}
		}
		return false
	})
	t.Logf("%s serves as master %v after the fault", master.cfg.Self, time.Since(start).Round(time.Millisecond))

	var got []string
	for _, i := range []int{1, 2} {
		ch := channel(t, dial(t, "amqp://guest:guest@"+s.clients[i]+"/"))
		for {
			m, ok, err := ch.Get(queue, false)
			if err != nil {
				t.Fatalf("get through node-%d after the failover: %v", i, err)
			}
			if !ok {
				break
			}
			if !m.Redelivered {
				t.Errorf("message %s not redelivered: a copy the new master held may have been delivered", m.Body)
			}
			got = append(got, string(m.Body))
			if err := m.Ack(false); err != nil {
				t.Fatal(err)
			}
		}
	}
	if want := bodies[acked:]; !slices.Equal(got, want) {
		t.Fatalf("after the failover the queue holds %v, want %v (the confirmed, unacked messages in order)", got, want)
	}

	for _, i := range []int{1, 2} {
		ch := channel(t, dial(t, "amqp://guest:guest@"+s.clients[i]+"/"))
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		publishConfirmed(t, ch, "", queue, fmt.Sprintf("after-%d", i))
	}
	other := s.groups[1]
	if other == master {
		other = s.groups[2]
	}
	waitFor(t, "the other survivor holding the new messages", 30*time.Second, func() bool {
		return other.Mirror().Held("/", queue) == 2
	})
	return env, s, master
}

// The master's sidecar dies (its sockets close): the others notice its
// silence and the raft leader elects a synced mirror.
func TestFailoverOnMasterSidecarLoss(t *testing.T) {
	failoverScenario(t, func(_ *testenv.Group, s *sidecars) { s.kill(t, 0) })
}

// The master's broker dies (kill -9) behind a live sidecar: its probe
// notices, it stops serving and leaves, a synced mirror is promoted, and
// its front goes on serving clients over the peer link. When the broker
// is back the node rejoins as a new, empty mirror.
func TestFailoverOnMasterBrokerLoss(t *testing.T) {
	env, s, master := failoverScenario(t, func(env *testenv.Group, _ *sidecars) {
		if err := env.Nodes[0].Kill(); err != nil {
			t.Fatal(err)
		}
	})
	ch := channel(t, dial(t, "amqp://guest:guest@"+s.clients[0]+"/"))
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	publishConfirmed(t, ch, "", "ha.failover", "through the old master's front")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := env.Nodes[0].Start(ctx); err != nil {
		t.Fatal(err)
	}
	// Stopped before the leak check: the restarted broker's waiter is testenv's.
	defer func() {
		if err := env.Nodes[0].Kill(); err != nil {
			t.Errorf("kill node-0 at the end: %v", err)
		}
	}()
	waitFor(t, "node-0 back in the view as a mirror", time.Minute, func() bool {
		v := master.View()
		_, in := v.Member("node-0")
		return in && v.Master == master.cfg.Self && !s.groups[0].IsMaster()
	})
}

// The master's broker freezes (SIGSTOP: sockets open, nothing answers):
// its probe times out, and the group fails over as for a dead broker.
func TestFailoverOnMasterBrokerFreeze(t *testing.T) {
	env, _, _ := failoverScenario(t, func(env *testenv.Group, _ *sidecars) {
		if err := env.Nodes[0].Pause(); err != nil {
			t.Fatal(err)
		}
	})
	if err := env.Nodes[0].Unpause(); err != nil {
		t.Fatal(err)
	}
}

// SIGTERM on the master: it hands over to a synced mirror first (its
// sessions closed with 320), then leaves and stops; nothing is lost.
func TestGracefulHandover(t *testing.T) {
	failoverScenario(t, func(_ *testenv.Group, s *sidecars) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.groups[0].Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if v := s.groups[1].View(); v.Master == "node-0" {
			t.Errorf("the master shut down before a view named another: %+v", v)
		}
		s.kill(t, 0)
	})
}

// A mirror's broker freezes: its probe notices, the mirror leaves, and
// confirms stop waiting for it (they are not held for the freeze's
// length). Resumed, it comes back as an empty mirror.
func TestMirrorBrokerFreezeDoesNotHoldConfirms(t *testing.T) {
	env, s := startGroup(t, policy(t, "ha-all", `^ha\.`, map[string]any{"ha-mode": "all"}))
	ch := channel(t, dial(t, "amqp://guest:guest@"+s.clients[0]+"/"))
	if _, err := ch.QueueDeclare("ha.frozen", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	publishConfirmed(t, ch, "", "ha.frozen", "before")
	if err := env.Nodes[2].Pause(); err != nil {
		t.Fatal(err)
	}
	paused := true
	defer func() {
		if paused {
			if err := env.Nodes[2].Unpause(); err != nil {
				t.Errorf("unpause node-2 at the end: %v", err)
			}
		}
	}()
	publishConfirmed(t, ch, "", "ha.frozen", "while node-2's broker is frozen")
	if v := s.groups[0].View(); func() bool { _, in := v.Member("node-2"); return in }() {
		t.Fatalf("confirmed while node-2, frozen, is still in the view: %+v", v.Members)
	}
	if err := env.Nodes[2].Unpause(); err != nil {
		t.Fatal(err)
	}
	paused = false
	waitFor(t, "node-2 back in the view", time.Minute, func() bool {
		_, in := s.groups[0].View().Member("node-2")
		return in && s.groups[2].RoleState().String() == "mirror"
	})
	publishConfirmed(t, ch, "", "ha.frozen", "after")
	waitFor(t, "node-2 holding the message published after it came back", 30*time.Second, func() bool {
		return s.groups[2].Mirror().Held("/", "ha.frozen") == 1
	})
}

// ctl transfer_master: asked of a mirror (node-1), the master (node-0)
// hands over to node-2 as a graceful handover does, and stays as a
// mirror. A transfer the leader would refuse is refused before the
// master stops serving.
func TestTransferMaster(t *testing.T) {
	_, s, master := failoverScenario(t, func(_ *testenv.Group, s *sidecars) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := s.groups[1].TransferMaster(ctx, "node-9"); !errors.Is(err, ErrUnknownMember) {
			t.Errorf("transfer to a node that is no member: %v, want ErrUnknownMember", err)
		}
		if v, err := s.groups[1].TransferMaster(ctx, "node-0"); err != nil || v.Master != "node-0" {
			t.Errorf("transfer to the master itself: %v, %q; want nothing done", err, v.Master)
		}
		if !s.groups[0].IsMaster() {
			t.Fatal("a refused transfer stopped the master")
		}
		v, err := s.groups[1].TransferMaster(ctx, "node-2")
		if err != nil {
			t.Fatalf("transfer to node-2: %v", err)
		}
		if v.Master != "node-2" {
			t.Fatalf("transfer to node-2 answered a view naming %q", v.Master)
		}
	})
	if master != s.groups[2] {
		t.Fatalf("%s serves as master, want node-2", master.cfg.Self)
	}
	waitFor(t, "node-0 mirroring again", 30*time.Second, func() bool {
		_, in := s.groups[2].View().Member("node-0")
		return in && s.groups[0].RoleState() == failover.RoleMirror
	})
	// The old master's broker holds the queue as a master did: its new
	// mirror discards that when the new master declares the queue to it
	// again, and a sync makes it a synced copy.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := master.SyncQueue(ctx, "/", "ha.failover"); err != nil {
		t.Fatalf("sync after the transfer: %v", err)
	}
	if got := master.Synced("/", "ha.failover"); !slices.Contains(got, "node-0") {
		t.Fatalf("synced mirrors after the sync: %v, want node-0 among them", got)
	}
	waitFor(t, "node-0 holding the queue's 2 messages as copies", 30*time.Second, func() bool {
		return s.groups[0].Mirror().Held("/", "ha.failover") == 2
	})
}

// F1 (docs/RELIABILITY.md): the master's broker freezes while no mirror is
// synced for a mirrored queue. No unsynced mirror may be master (its
// broker lacks the older messages, and the old master would discard its
// own copy on rejoining as a mirror): the group waits with no master,
// and when the old master's broker answers again it is master again, with
// its queue still known and mirrored; nothing confirmed is lost.
func TestLostMasterComesBack(t *testing.T) {
	env, s := startGroup(t, policy(t, "ha-all", `^ha\.`, map[string]any{"ha-mode": "all"}))
	const queue = "ha.lost"
	ch := channel(t, dial(t, "amqp://guest:guest@"+s.clients[0]+"/"))
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	var bodies []string
	for i := 1; i <= 20; i++ {
		bodies = append(bodies, strconv.Itoa(i))
	}
	publishConfirmed(t, ch, "", queue, bodies[:10]...)

	// Both mirrors lose their brokers for a moment and come back empty
	// (ha-sync-mode manual: they stay unsynced).
	for _, i := range []int{1, 2} {
		if err := env.Nodes[i].Pause(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, fmt.Sprintf("node-%d out of the view", i), 30*time.Second, func() bool {
			_, in := s.groups[0].View().Member(fmt.Sprintf("node-%d", i))
			return !in
		})
		if err := env.Nodes[i].Unpause(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, fmt.Sprintf("node-%d mirroring again", i), time.Minute, func() bool {
			_, in := s.groups[0].View().Member(fmt.Sprintf("node-%d", i))
			return in && s.groups[i].RoleState() == failover.RoleMirror
		})
	}
	publishConfirmed(t, ch, "", queue, bodies[10:]...)
	if got := s.groups[0].Synced("/", queue); len(got) != 0 {
		t.Fatalf("synced mirrors %v, want none (manual sync)", got)
	}
	waitFor(t, "the view placing the queue's mirrors", 30*time.Second, func() bool {
		return len(s.groups[1].View().Mirrors[replicate.QueueKey("/", queue)]) == 2
	})

	if err := env.Nodes[0].Pause(); err != nil {
		t.Fatal(err)
	}
	paused := true
	defer func() {
		if paused {
			if err := env.Nodes[0].Unpause(); err != nil {
				t.Errorf("unpause node-0 at the end: %v", err)
			}
		}
	}()
	waitFor(t, "a view without a master, waiting for node-0", 30*time.Second, func() bool {
		v := s.groups[1].View()
		return v.Master == "" && v.LostMaster == "node-0"
	})
	for _, g := range s.groups[1:] {
		if g.IsMaster() {
			t.Fatalf("%s serves as master without the messages only node-0 holds", g.cfg.Self)
		}
	}
	if err := env.Nodes[0].Unpause(); err != nil {
		t.Fatal(err)
	}
	paused = false
	waitFor(t, "node-0 master again", time.Minute, func() bool {
		return s.groups[0].IsMaster() && s.groups[1].View().Master == "node-0"
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.groups[0].SyncQueue(ctx, "/", queue); err != nil {
		t.Fatalf("sync of %s after node-0 came back: %v (the master must still know the queue)", queue, err)
	}
	cons := channel(t, dial(t, "amqp://guest:guest@"+s.clients[1]+"/"))
	var got []string
	for {
		m, ok, err := cons.Get(queue, false)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		got = append(got, string(m.Body))
		if err := m.Ack(false); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(got, bodies) {
		t.Fatalf("the queue holds %v, want every confirmed message %v", got, bodies)
	}
}
