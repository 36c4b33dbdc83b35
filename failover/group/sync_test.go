package group

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mirrorproxy/mirrorproxy/replicate"
)

// masterQueue connects a client to the master's sidecar, puts a channel in
// confirm mode and declares a durable queue there.
func masterQueue(t *testing.T, s *sidecars, q string, args amqp091.Table) (*amqp091.Connection, *amqp091.Channel) {
	t.Helper()
	c := dial(t, "amqp://guest:guest@"+s.clients[0]+"/")
	ch := channel(t, c)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(q, true, false, false, false, args); err != nil {
		t.Fatal(err)
	}
	return c, ch
}

// drain reads every message of queue on the broker at url, directly.
func drain(t *testing.T, url, queue string) []string {
	t.Helper()
	c := dial(t, url)
	defer c.Close()
	ch := channel(t, c)
	var out []string
	for {
		d, ok, err := ch.Get(queue, true)
		if err != nil {
			t.Fatalf("get from %q: %v", queue, err)
		}
		if !ok {
			return out
		}
		out = append(out, string(d.Body))
	}
}

func bodies(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%03d", prefix, i)
	}
	return out
}

// TestSyncNewMirror follows issue 4's sync story on three brokers: a queue
// placed on one mirror gains a second by a policy change (made on the
// master, replicated); the new mirror is unsynced and holds only what came
// after; sync_queue copies the older messages and makes it synced; every
// broker then holds the master's messages in the master's order.
func TestSyncNewMirror(t *testing.T) {
	env, s := startGroup(t, policy(t, "ha", `^sync\.`, map[string]any{"ha-mode": "exactly", "ha-params": 2}))
	master := s.groups[0]
	const q = "sync.q"
	c, ch := masterQueue(t, s, q, nil)
	old := bodies("old", 150)
	publishConfirmed(t, ch, "", q, old...)

	if got := master.Synced("/", q); !slices.Equal(got, []string{"node-1"}) {
		t.Fatalf("synced mirrors %v, want [node-1] (exactly 2: the oldest other member)", got)
	}
	if queueExists(t, env.Nodes[2].URL, q) {
		t.Fatal("node-2 has a copy though the policy places none there")
	}
	waitFor(t, "node-1 to hold the old messages", 30*time.Second, func() bool { return s.groups[1].Mirror().Held("/", q) == len(old) })

	// The policy changes on the master only; the ring carries it.
	if err := s.groups[1].SetPolicy(policy(t, "ha", `^sync\.`, map[string]any{"ha-mode": "all"})); !errors.Is(err, ErrNotMaster) {
		t.Fatalf("SetPolicy on a mirror: %v, want ErrNotMaster", err)
	}
	if err := master.SetPolicy(policy(t, "ha", `^sync\.`, map[string]any{"ha-mode": "all"})); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node-2's copy of the queue", 30*time.Second, func() bool { return queueExists(t, env.Nodes[2].URL, q) })
	if got := master.Synced("/", q); !slices.Equal(got, []string{"node-1"}) {
		t.Fatalf("after the policy change synced %v, want [node-1]: the new mirror starts unsynced", got)
	}
	for i, g := range s.groups[1:] {
		if d, ok := g.cfg.Policies.Get("/", "ha"); !ok || d.Definition.String() != `{"ha-mode":"all"}` {
			t.Fatalf("node-%d's policy: %v %v", i+1, d.Definition, ok)
		}
	}

	recent := bodies("new", 20)
	publishConfirmed(t, ch, "", q, recent...)
	waitFor(t, "node-2 to hold the new messages only", 30*time.Second, func() bool { return s.groups[2].Mirror().Held("/", q) == len(recent) })
	waitFor(t, "node-1 to hold all", 30*time.Second, func() bool { return s.groups[1].Mirror().Held("/", q) == len(old)+len(recent) })

	// A client holds the oldest message delivered and unacked: the
	// mirror cannot be given it from the queue, so the sync waits for it.
	cons := channel(t, c)
	if err := cons.Qos(1, 0, false); err != nil {
		t.Fatal(err)
	}
	dl, err := cons.Consume(q, "holder", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	first := <-dl
	if string(first.Body) != old[0] {
		t.Fatalf("consumer got %q first", first.Body)
	}
	if err := cons.Cancel("holder", false); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := master.CancelSyncQueue("/", q); !errors.Is(err, replicate.ErrNotSyncing) {
		t.Fatalf("cancel with no sync running: %v", err)
	}
	synced := make(chan error, 1)
	go func() { synced <- master.SyncQueue(ctx, "/", q) }()
	waitFor(t, "node-2 to hold every message but the unacked one", 30*time.Second, func() bool {
		return s.groups[2].Mirror().Held("/", q) == len(old)-1+len(recent)
	})
	if !master.Syncing("/", q) {
		t.Fatal("the sync finished while a client held a message the new mirror lacks")
	}
	if err := first.Ack(false); err != nil {
		t.Fatal(err)
	}
	if err := <-synced; err != nil {
		t.Fatalf("sync_queue: %v", err)
	}
	old = old[1:]
	if got := master.Synced("/", q); !slices.Equal(got, []string{"node-1", "node-2"}) {
		t.Fatalf("after sync synced %v, want both", got)
	}
	waitFor(t, "node-2 to hold every message", 30*time.Second, func() bool { return s.groups[2].Mirror().Held("/", q) == len(old)+len(recent) })
	waitFor(t, "the view to record the synced set", 30*time.Second, func() bool {
		return slices.Equal(master.View().Synced[replicate.QueueKey("/", q)], []string{"node-1", "node-2"})
	})

	// Every broker holds the master's messages in the master's order,
	// nothing lost or duplicated by the sync.
	want := append(slices.Clone(old), recent...)
	c.Close()
	s.close(t)()
	for i, n := range env.Nodes {
		if got := drain(t, n.URL, q); !slices.Equal(got, want) {
			t.Fatalf("node-%d's queue after sync: %d messages %v…, want %d in the master's order", i, len(got), got[:min(len(got), 5)], len(want))
		}
	}
}

// TestSyncAutomatic: with ha-sync-mode automatic a mirror gained by a
// policy change is synced without sync_queue.
func TestSyncAutomatic(t *testing.T) {
	env, s := startGroup(t, policy(t, "ha", `^auto\.`, map[string]any{"ha-mode": "nodes", "ha-params": []any{"node-1"}, "ha-sync-mode": "automatic"}))
	master := s.groups[0]
	const q = "auto.q"
	c, ch := masterQueue(t, s, q, amqp091.Table{"x-queue-mode": "default"})
	msgs := bodies("m", 40)
	publishConfirmed(t, ch, "", q, msgs...)
	if err := master.SetPolicy(policy(t, "ha", `^auto\.`, map[string]any{"ha-mode": "all", "ha-sync-mode": "automatic", "ha-sync-batch-size": 7})); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the automatic sync", 60*time.Second, func() bool {
		return slices.Equal(master.Synced("/", q), []string{"node-1", "node-2"})
	})
	waitFor(t, "node-2 to hold every message", 30*time.Second, func() bool { return s.groups[2].Mirror().Held("/", q) == len(msgs) })
	c.Close()
	s.close(t)()
	if got := drain(t, env.Nodes[2].URL, q); !slices.Equal(got, msgs) {
		t.Fatalf("node-2's queue: %v", got)
	}
}

// TestPurgeKeepsUnacked: queue.purge on the master leaves the messages
// clients hold delivered and unacked; the mirrors keep their copies of
// those, so a message requeued after the purge is on every broker.
func TestPurgeKeepsUnacked(t *testing.T) {
	env, s := startGroup(t, policy(t, "ha", `^purge\.`, map[string]any{"ha-mode": "all"}))
	const q = "purge.q"
	c, ch := masterQueue(t, s, q, nil)
	publishConfirmed(t, ch, "", q, bodies("p", 10)...)
	cons := channel(t, c)
	if err := cons.Qos(1, 0, false); err != nil {
		t.Fatal(err)
	}
	dl, err := cons.Consume(q, "holder", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	held := <-dl
	if n, err := ch.QueuePurge(q, false); err != nil || n != 9 {
		t.Fatalf("purge: %d, %v; want the 9 not delivered", n, err)
	}
	for i, g := range s.groups[1:] {
		waitFor(t, fmt.Sprintf("node-%d to hold only the unacked copy", i+1), 30*time.Second, func() bool { return g.Mirror().Held("/", q) == 1 })
	}
	if err := held.Nack(false, true); err != nil {
		t.Fatal(err)
	}
	if err := cons.Cancel("holder", false); err != nil {
		t.Fatal(err)
	}
	c.Close()
	s.close(t)()
	for i, n := range env.Nodes {
		if got := drain(t, n.URL, q); !slices.Equal(got, []string{"p-000"}) {
			t.Fatalf("node-%d's queue after purge and requeue: %v, want [p-000]", i, got)
		}
	}
}

// TestSyncWhilePublishing: a client keeps publishing (with confirms) while
// sync_queue copies the older messages to a new mirror; the copies routed
// to the new mirror during the sync end up behind the sync's, so once the
// client stops every broker holds the master's messages in its order.
func TestSyncWhilePublishing(t *testing.T) {
	env, s := startGroup(t, policy(t, "ha", `^busy\.`, map[string]any{"ha-mode": "exactly", "ha-params": 2}))
	master := s.groups[0]
	const q = "busy.q"
	c, ch := masterQueue(t, s, q, nil)
	want := bodies("old", 3000)
	publishConfirmed(t, ch, "", q, want...)
	if err := master.SetPolicy(policy(t, "ha", `^busy\.`, map[string]any{"ha-mode": "all", "ha-sync-batch-size": 100})); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node-2's copy", 30*time.Second, func() bool { return queueExists(t, env.Nodes[2].URL, q) })

	// The publisher runs on its own connection until the sync is done.
	pc := dial(t, "amqp://guest:guest@"+s.clients[0]+"/")
	pch := channel(t, pc)
	if err := pch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	published := make(chan []string, 1)
	go func() {
		var sent []string
		defer func() { published <- sent }()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			b := fmt.Sprintf("new-%05d", i)
			dc, err := pch.PublishWithDeferredConfirmWithContext(context.Background(), "", q, false, false,
				amqp091.Publishing{DeliveryMode: amqp091.Persistent, Body: []byte(b)})
			if err != nil {
				t.Errorf("publish during the sync: %v", err)
				return
			}
			if ok, err := dc.WaitContext(context.Background()); !ok || err != nil {
				t.Errorf("confirm during the sync: %v %v", ok, err)
				return
			}
			sent = append(sent, b)
		}
	}()
	// Some routed copies before the sync starts, more while it runs.
	waitFor(t, "node-2 to receive routed copies", 30*time.Second, func() bool { return s.groups[2].Mirror().Held("/", q) >= 20 })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := master.SyncQueue(ctx, "/", q); err != nil {
		t.Fatalf("sync_queue: %v", err)
	}
	close(stop)
	recent := <-published
	if len(recent) < 20 {
		t.Fatalf("only %d publishes during the test", len(recent))
	}
	want = append(want, recent...)
	if got := master.Synced("/", q); !slices.Equal(got, []string{"node-1", "node-2"}) {
		t.Fatalf("synced %v", got)
	}
	for i, g := range s.groups[1:] {
		waitFor(t, fmt.Sprintf("node-%d to hold every message", i+1), 30*time.Second, func() bool { return g.Mirror().Held("/", q) == len(want) })
	}
	c.Close()
	pc.Close()
	s.close(t)()
	for i, n := range env.Nodes {
		if got := drain(t, n.URL, q); !slices.Equal(got, want) {
			first := 0
			for first < min(len(got), len(want)) && got[first] == want[first] {
				first++
			}
			t.Fatalf("node-%d's queue: %d messages, want %d in the master's order; first difference at %d", i, len(got), len(want), first)
		}
	}
	t.Logf("%d old messages synced while %d were published", 3000, len(recent))
}

// TestMirrorFailureLeavesSyncedSet: a mirror whose broker refuses an op
// (here a queue declare: its broker already has a queue of that name with
// other arguments) reports it; the master drops it from the queue's synced
// set before anything later is confirmed, the group goes on confirming,
// and a sync_queue that the mirror cannot take says so and leaves it
// unsynced.
func TestMirrorFailureLeavesSyncedSet(t *testing.T) {
	env, s := startGroup(t, policy(t, "ha", `^fail\.`, map[string]any{"ha-mode": "all"}))
	master := s.groups[0]
	const q = "fail.q"
	// node-2's broker has its own fail.q, which the mirror's declare
	// cannot match (406 inequivalent arg).
	d := dial(t, env.Nodes[2].URL)
	if _, err := channel(t, d).QueueDeclare(q, true, false, false, false, amqp091.Table{"x-max-length": int32(5)}); err != nil {
		t.Fatal(err)
	}
	d.Close()

	_, ch := masterQueue(t, s, q, nil)
	publishConfirmed(t, ch, "", q, bodies("f", 10)...)
	// The failure report was stable before the publishes after it were.
	if got := master.Synced("/", q); !slices.Equal(got, []string{"node-1"}) {
		t.Fatalf("synced %v, want only node-1: node-2 failed the declare", got)
	}
	if s.groups[2].ApplyFailures() == 0 {
		t.Fatal("node-2 counted no failure")
	}
	waitFor(t, "node-1's copies", 30*time.Second, func() bool { return s.groups[1].Mirror().Held("/", q) == 10 })

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := master.SyncQueue(ctx, "/", q)
	if !errors.Is(err, replicate.ErrSyncFailed) || !strings.Contains(err.Error(), "node-2") {
		t.Fatalf("sync_queue: %v, want ErrSyncFailed naming node-2", err)
	}
	if got := master.Synced("/", q); !slices.Equal(got, []string{"node-1"}) {
		t.Fatalf("after the failed sync synced %v", got)
	}
}
