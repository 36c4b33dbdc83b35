package failover

import (
	"cmp"
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
}

// View is what raft agrees on: the ring and who is master.
type View struct {
	Epoch uint64 `json:"epoch"`
	// Members in ring order. Witnesses vote in raft but are not here.
	Members []Member `json:"members"`
	// Master is the ID of the member whose broker serves clients ("" when
	// the group has no member).
	Master string `json:"master"`
	// Synced maps a queue name to the IDs of the mirrors synced for it.
	// The replication layer fills it; gm and raft treat it as opaque.
	Synced map[string][]string `json:"synced,omitempty"`
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

func (v View) clone() View {
	c := v
	c.Members = slices.Clone(v.Members)
	if v.Synced != nil {
		c.Synced = make(map[string][]string, len(v.Synced))
		for q, ids := range v.Synced {
			c.Synced[q] = slices.Clone(ids)
		}
	}
	return c
}

// Progress is how far a member has applied the master's stream, for
// elections (higher is more up to date).
type Progress map[string]uint64

// ElectMaster picks the next master among v's members: a member synced for
// every queue in v.Synced that has applied the most, ties to the oldest
// (lowest JoinEpoch, then ring order). With none synced it returns "" unless
// promoteUnsynced, when it picks the most up-to-date member by the same rule
// (a possible loss the caller must log and count).
func ElectMaster(v View, progress Progress, promoteUnsynced bool) string {
	cands := make([]Member, 0, len(v.Members))
	for _, m := range v.Members {
		if synced(v, m.ID) {
			cands = append(cands, m)
		}
	}
	if len(cands) == 0 {
		if !promoteUnsynced {
			return ""
		}
		cands = v.Members
	}
	best := slices.MinFunc(cands, func(a, b Member) int {
		if c := cmp.Compare(progress[b.ID], progress[a.ID]); c != 0 {
			return c // more applied first
		}
		return cmp.Compare(a.JoinEpoch, b.JoinEpoch)
	})
	return best.ID
}

func synced(v View, id string) bool {
	for _, ids := range v.Synced {
		if !slices.Contains(ids, id) {
			return false
		}
	}
	return true
}
