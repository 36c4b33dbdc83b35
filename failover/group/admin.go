package group

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/mirrorproxy/mirrorproxy/failover"
	"github.com/mirrorproxy/mirrorproxy/replicate"
)

// ErrNotMaster is returned by the group-wide changes on a node that is
// not the master; its message names the master.
var ErrNotMaster = errors.New("group: this node is not the master")

func (g *Group) notMaster() error {
	return fmt.Errorf("%w: ask the master, %q", ErrNotMaster, g.View().Master)
}

// SetPolicy sets a policy for the whole group (through the master's ring,
// so every mirror applies it in op order). Only the master accepts it.
func (g *Group) SetPolicy(p replicate.Policy) error {
	m := g.Master()
	if m == nil {
		return g.notMaster()
	}
	return m.SetPolicy(p)
}

// ClearPolicy clears a policy for the whole group; the error wraps
// replicate.ErrPolicyNotFound when there is none by that name.
func (g *Group) ClearPolicy(vhost, name string) error {
	m := g.Master()
	if m == nil {
		return g.notMaster()
	}
	return m.ClearPolicy(vhost, name)
}

// SyncQueue synchronises a queue's unsynced mirrors and waits for it
// (rabbitmqctl sync_queue); ctx ending stops the wait, not the sync.
func (g *Group) SyncQueue(ctx context.Context, vhost, queue string) error {
	m := g.Master()
	if m == nil {
		return g.notMaster()
	}
	return m.SyncQueue(ctx, vhost, queue)
}

// CancelSyncQueue stops a queue's running sync (rabbitmqctl
// cancel_sync_queue).
func (g *Group) CancelSyncQueue(vhost, queue string) error {
	m := g.Master()
	if m == nil {
		return g.notMaster()
	}
	return m.CancelSync(vhost, queue)
}

// Synced returns the mirrors synced for a queue (the master's knowledge;
// a mirror answers none: ask the master).
func (g *Group) Synced(vhost, queue string) []string {
	if m := g.Master(); m != nil {
		return m.Synced(vhost, queue)
	}
	return nil
}

// Syncing reports whether a sync of the queue runs (on the master).
func (g *Group) Syncing(vhost, queue string) bool {
	if m := g.Master(); m != nil {
		return m.Syncing(vhost, queue)
	}
	return false
}

// members is a view's membership as placement sees it.
func members(v failover.View) []replicate.Member {
	out := make([]replicate.Member, 0, len(v.Members))
	for _, m := range v.Members {
		out = append(out, replicate.Member{Node: m.ID, JoinEpoch: m.JoinEpoch})
	}
	return out
}

// masterLoop runs on the master while it serves: it hands each new view's
// membership to the replicate.Master (which replays topology to newcomers
// and starts automatic syncs) and keeps the view's synced sets in raft up
// to date. It runs apart from raft's FSM goroutine, because both may wait
// on the ring and on raft.
func (g *Group) masterLoop(m *replicate.Master, seen failover.View, stop <-chan struct{}) {
	defer g.wg.Done()
	for {
		g.viewMu.Lock()
		v, ch := g.view, g.viewCh
		g.viewMu.Unlock()
		if v.Epoch != seen.Epoch {
			seen = v
			m.SetMembers(members(v))
		}
		var retry <-chan time.Time
		if !g.pushSynced(m) {
			retry = time.After(200 * time.Millisecond)
		}
		select {
		case <-retry:
		case <-ch:
		case <-g.syncedCh:
		case <-stop:
			return
		case <-g.stopped:
			return
		}
	}
}

// pushSynced writes the master's synced sets into the view (raft), where
// elections read them: on the raft leader directly, from elsewhere as a
// request over the peer link (only the master's are taken).
func (g *Group) pushSynced(m *replicate.Master) bool {
	gen := m.Unrecorded()
	want, placed := m.SyncedSets(), m.Placement()
	v := g.View()
	have := v.Synced
	keys := slices.Sorted(maps.Keys(want))
	for k := range have {
		if _, ok := want[k]; !ok {
			keys = append(keys, k) // gone: an empty set
		}
	}
	for _, k := range keys {
		w, ok := want[k]
		if h, had := have[k]; ok == had && slices.Equal(w, h) && slices.Equal(placed[k], v.Mirrors[k]) {
			continue
		}
		req := leaderRequest{Kind: reqSynced, Queue: k, IDs: w, Mirrors: placed[k], Forget: !ok}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := g.toLeader(ctx, req)
		cancel()
		if err != nil {
			g.log.Warn().Err(err).Msg("could not record a queue's synced mirrors in the view")
			return false
		}
	}
	// The view now names no mirror as synced that the master no longer
	// counts: the confirms held for that go out.
	m.Recorded(gen)
	return true
}

// syncedChanged is the master's OnSyncedChange: it wakes masterLoop.
func (g *Group) syncedChanged(map[string][]string) {
	select {
	case g.syncedCh <- struct{}{}:
	default:
	}
}
