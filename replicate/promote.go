package replicate

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// Promotion of a mirror (DESIGN §7), in the order the node's role asks for
// it: ApplyTail, then Release, then Promote.

// ApplyTail waits, bounded by ctx, until every op delivered so far is
// applied here: the departed master's tail (gm re-sends what any survivor
// has before it installs the next view, so the ops delivered once the view
// naming this node master is installed are the whole tail).
func (f *Follower) ApplyTail(ctx context.Context) error {
	if err := f.waitIdle(ctx); err != nil {
		return fmt.Errorf("replicate: promotion: the old master's tail: %w", err)
	}
	return nil
}

// Release stops taking ops and releases the held copies so that the broker
// requeues them in their original order (Mirror.Release). The follower and
// its mirror are done afterwards: the node serves as master or starts a
// new mirror.
func (f *Follower) Release(ctx context.Context) error {
	f.Stop()
	f.Wait()
	m, ok := f.mirror.(*Mirror)
	if !ok {
		return errors.New("replicate: release: the follower has no mirror to release")
	}
	if err := m.Release(ctx); err != nil {
		return fmt.Errorf("replicate: promotion: release of the held copies: %w", err)
	}
	return nil
}

// Promote returns a Master over cfg that knows the group's topology as the
// follower kept it, with the synced sets the view recorded (synced:
// QueueKey → member IDs; this node and members not placed by the policies
// among cfg.Members are left out).
func (f *Follower) Promote(cfg MasterConfig, synced map[string][]string) *Master {
	m := NewMaster(cfg)
	f.mu.Lock()
	cat := f.cat
	f.cat = newCatalog()
	f.mu.Unlock()
	m.pol.Lock()
	m.mu.Lock()
	m.cat = cat
	for _, e := range cat.all() {
		set := map[string]bool{}
		plan := m.planLocked(e)
		for _, n := range synced[QueueKey(e.Vhost, e.Name)] {
			if n != cfg.Self && slices.Contains(plan, n) {
				set[n] = true
			}
		}
		m.sy.synced[qkey{e.Vhost, e.Name}] = set
	}
	m.mu.Unlock()
	m.pol.Unlock()
	m.changed()
	return m
}

// Topology is what a master knew of its vhosts' queues, exchanges and
// bindings when it stopped (Master.Catalog): a node that is master again
// before it learnt anything newer (Follower.Adopt) serves its broker's
// queues with it, mirrored as before.
type Topology struct{ cat *catalog }

// Queues counts the queues in t.
func (t Topology) Queues() int {
	if t.cat == nil {
		return 0
	}
	return len(t.cat.all())
}

// Catalog returns the master's topology. Call it once the Master is
// closed: the catalog is handed over, not copied.
func (m *Master) Catalog() Topology {
	m.mu.Lock()
	defer m.mu.Unlock()
	return Topology{cat: m.cat}
}

// Adopt makes t the follower's catalog, for a Promote to come, when the
// follower has applied no op: nothing it was told is newer than t. It
// reports whether it did.
func (f *Follower) Adopt(t Topology) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.used || t.cat == nil {
		return false
	}
	f.cat = t.cat
	return true
}
