package failover

import (
	"cmp"
	"maps"
	"slices"

	"github.com/mirrorproxy/mirrorproxy/gm"
)

// Member is one sidecar in the view.
type Member struct {
	ID string `json:"id"`
	// GMAddr is the member's gm ring address; RaftAddr its raft address.
	GMAddr   string `json:"gm_addr"`
	RaftAddr string `json:"raft_addr"`
	// JoinEpoch is the epoch of the view that admitted this incarnation:
	// its gm incarnation, and its age for elections (lower is older).
	JoinEpoch uint64 `json:"join_epoch"`
	// Boot names the process that joined (random per start): a join
	// repeated by the same process is not a new incarnation.
	Boot string `json:"boot,omitempty"`
}

// View is what raft agrees on: the ring and who is master.
type View struct {
	Epoch uint64 `json:"epoch"`
	// Members in ring order. Witnesses vote in raft but are not here.
	Members []Member `json:"members"`
	// Master is the ID of the member whose broker serves clients ("" when
	// the group has no member, or no member may be master).
	Master string `json:"master"`
	// MasterEpoch is the epoch of the view that installed Master (by an
	// election or a handover). It stays while later views keep the same
	// master, so a node can tell "still the master it was" from "master
	// again after someone else was". 0 in views written before it existed.
	MasterEpoch uint64 `json:"master_epoch,omitempty"`
	// Synced maps a queue name to the IDs of the mirrors synced for it
	// (the master is never listed). The replication layer fills it; gm and
	// raft treat it as opaque.
	Synced map[string][]string `json:"synced,omitempty"`
	// Mirrors maps a queue name to the members its policy places a mirror
	// on (the master excluded), pushed beside Synced. A queue is mirrored
	// when it has a mirror here or a synced mirror in Synced (views older
	// than this field only have Synced, where an unmirrored queue has an
	// empty set). Only mirrored queues constrain an election.
	Mirrors map[string][]string `json:"mirrors,omitempty"`
	// MasterUnsynced lists, sorted, the mirrored queues that Master was
	// not synced for when it was elected (ha-promote-on-failure: the
	// confirmed messages only the departed master held may be lost).
	// Every node reads the same list: a queue under `when-synced` is
	// refused until an operator forces it (CmdForceQueue) or it is
	// deleted; a queue under `always` is served and its possible loss
	// logged and counted. Later elections add to it; only force-queue and
	// forget-synced take a queue out.
	MasterUnsynced []string `json:"master_unsynced,omitempty"`
	// LostMaster is, while the view names no master, the master the group
	// lost with no member synced to succeed it, and LostQueues (sorted)
	// the mirrored queues it held: its broker may hold confirmed messages
	// no member has. Only LostMaster itself is master again when it
	// rejoins (its broker kept its queues); any other member would serve
	// those queues without them, and a mirror rejoining "from empty"
	// discards its own copies. Elections that allow an unsynced master
	// (ha-promote-on-failure: always) elect another and move LostQueues
	// to MasterUnsynced. Both are empty while a master is named.
	LostMaster string   `json:"lost_master,omitempty"`
	LostQueues []string `json:"lost_queues,omitempty"`
}

// Member returns the member with id.
func (v View) Member(id string) (Member, bool) {
	for _, m := range v.Members {
		if m.ID == id {
			return m, true
		}
	}
	return Member{}, false
}

// GM is the ring view gm installs.
func (v View) GM() gm.View {
	g := gm.View{Epoch: v.Epoch}
	for _, m := range v.Members {
		g.Members = append(g.Members, gm.Member{ID: m.ID, Inc: m.JoinEpoch})
	}
	return g
}

// Mirrored reports whether queue has a mirror: one placed by its policy
// (Mirrors) or one synced for it (Synced). "Synced" is asked only of
// mirrored queues: a queue with no mirror does not block an election.
func (v View) Mirrored(queue string) bool {
	return len(v.Mirrors[queue]) > 0 || len(v.Synced[queue]) > 0
}

// MirroredQueues returns the mirrored queues, sorted.
func (v View) MirroredQueues() []string {
	var qs []string
	for q := range v.Synced {
		if v.Mirrored(q) {
			qs = append(qs, q)
		}
	}
	for q := range v.Mirrors {
		if _, dup := v.Synced[q]; !dup && v.Mirrored(q) {
			qs = append(qs, q)
		}
	}
	slices.Sort(qs)
	return qs
}

// UnsyncedFor returns, sorted, the mirrored queues that member id is not
// synced for (nil when it is synced for all of them).
func (v View) UnsyncedFor(id string) []string {
	var out []string
	for _, q := range v.MirroredQueues() {
		if !slices.Contains(v.Synced[q], id) {
			out = append(out, q)
		}
	}
	return out
}

func (v View) clone() View {
	c := v
	c.Members = slices.Clone(v.Members)
	c.Synced = cloneSets(v.Synced)
	c.Mirrors = cloneSets(v.Mirrors)
	c.MasterUnsynced = slices.Clone(v.MasterUnsynced)
	c.LostQueues = slices.Clone(v.LostQueues)
	return c
}

func cloneSets(m map[string][]string) map[string][]string {
	if m == nil {
		return nil
	}
	c := make(map[string][]string, len(m))
	for q, ids := range m {
		c[q] = slices.Clone(ids)
	}
	return c
}

// Progress is how far each member has applied the master's stream (ops
// applied, higher is more up to date). The raft leader supplies it in the
// command that may elect (remove, join); the replicas never compute it, so
// Next stays pure and every replica elects the same member.
type Progress map[string]uint64

// Election is the outcome of electing a master.
type Election struct {
	// Master is the elected member's ID, "" when none may be master.
	Master string
	// Unsynced lists, sorted, the mirrored queues Master is not synced
	// for: empty unless the election had to allow an unsynced master.
	Unsynced []string
}

// Elect picks the next master among v's members (the candidates: the
// caller leaves departed members out of Members but may keep them in the
// synced sets, which only decide which queues are mirrored).
//
//   - A member synced for every mirrored queue is preferred: the one that
//     applied the most (progress), ties to the oldest (lowest JoinEpoch),
//     then ring order.
//   - When no member is synced for all of them, and allowUnsynced (the
//     group allows promoting an unsynced member, ha-promote-on-failure),
//     the member synced for the most mirrored queues wins, then the most
//     applied, then the oldest, then ring order; Election.Unsynced lists
//     the queues it lacks. Without allowUnsynced there is no master.
//
// Elect is deterministic: the same view and progress give the same result.
func Elect(v View, progress Progress, allowUnsynced bool) Election {
	type cand struct {
		i       int
		m       Member
		missing []string
	}
	var all, full []cand
	for i, m := range v.Members {
		c := cand{i: i, m: m, missing: v.UnsyncedFor(m.ID)}
		all = append(all, c)
		if len(c.missing) == 0 {
			full = append(full, c)
		}
	}
	older := func(a, b cand) int {
		if c := cmp.Compare(progress[b.m.ID], progress[a.m.ID]); c != 0 {
			return c // more applied first
		}
		if c := cmp.Compare(a.m.JoinEpoch, b.m.JoinEpoch); c != 0 {
			return c
		}
		return cmp.Compare(a.i, b.i)
	}
	switch {
	case len(full) > 0:
		return Election{Master: slices.MinFunc(full, older).m.ID}
	case len(all) == 0 || !allowUnsynced:
		return Election{}
	}
	best := slices.MinFunc(all, func(a, b cand) int {
		if c := cmp.Compare(len(a.missing), len(b.missing)); c != 0 {
			return c // synced for more queues first
		}
		return older(a, b)
	})
	return Election{Master: best.m.ID, Unsynced: best.missing}
}

// addUnsynced merges queues into v.MasterUnsynced, sorted and without
// duplicates.
func addUnsynced(v *View, queues []string) {
	if len(queues) == 0 {
		return
	}
	set := map[string]bool{}
	for _, q := range v.MasterUnsynced {
		set[q] = true
	}
	for _, q := range queues {
		set[q] = true
	}
	v.MasterUnsynced = slices.Sorted(maps.Keys(set))
}
