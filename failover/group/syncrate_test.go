package group

import (
	"context"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"
)

// TestSyncRate measures how fast sync_queue copies a queue to a new mirror
// (1 KiB persistent messages): set GROUP_SYNC_MEASURE to the number of
// messages. It reports, asserts nothing, and is skipped otherwise.
//
//	GROUP_SYNC_MEASURE=20000 go test -run TestSyncRate -v ./failover/group/
func TestSyncRate(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("GROUP_SYNC_MEASURE"))
	if n <= 0 {
		t.Skip("a measurement: set GROUP_SYNC_MEASURE=<messages>")
	}
	env, s := startGroup(t, policy(t, "ha", `^rate\.`, map[string]any{"ha-mode": "exactly", "ha-params": 2}))
	master := s.groups[0]
	const q = "rate.q"
	_, ch := masterQueue(t, s, q, nil)
	body := string(make([]byte, 1024))
	for done := 0; done < n; done += 1000 {
		batch := make([]string, min(1000, n-done))
		for i := range batch {
			batch[i] = body
		}
		publishConfirmed(t, ch, "", q, batch...)
	}
	if err := master.SetPolicy(policy(t, "ha", `^rate\.`, map[string]any{"ha-mode": "all", "ha-sync-batch-size": 4096})); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node-2's copy", 30*time.Second, func() bool { return queueExists(t, env.Nodes[2].URL, q) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	if err := master.SyncQueue(ctx, "/", q); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	// The shadow consumer holds up to its prefetch (MaxHeld); the broker
	// keeps the rest of the copy ready.
	waitFor(t, "node-2 to hold its copies", time.Minute, func() bool { return s.groups[2].Mirror().Held("/", q) == min(n, 65535) })
	held := time.Since(start)
	if !slices.Equal(master.Synced("/", q), []string{"node-1", "node-2"}) {
		t.Fatalf("synced %v", master.Synced("/", q))
	}
	t.Logf("sync of %d × 1 KiB: sync_queue returned after %v (%.0f msg/s, %.1f MiB/s); the new mirror's shadow consumer held min(n, 65535) copies after %v",
		n, took.Round(time.Millisecond), float64(n)/took.Seconds(), float64(n)/1024/took.Seconds(), held.Round(time.Millisecond))
}
