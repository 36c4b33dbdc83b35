package group

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mirrorproxy/mirrorproxy/failover"
)

// TestHistoryKeepsTheLatest: the event history is a ring buffer of the
// latest maxEvents events, listed oldest first.
func TestHistoryKeepsTheLatest(t *testing.T) {
	var h history
	if got := h.list(); len(got) != 0 {
		t.Fatalf("empty history lists %v", got)
	}
	for i := range maxEvents + 5 {
		h.add(Event{Kind: "view", Epoch: uint64(i)})
	}
	got := h.list()
	if len(got) != maxEvents || got[0].Epoch != 5 || got[len(got)-1].Epoch != maxEvents+4 {
		t.Fatalf("after %d events: %d listed, first epoch %d, last %d; want %d from 5 to %d",
			maxEvents+5, len(got), got[0].Epoch, got[len(got)-1].Epoch, maxEvents, maxEvents+4)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Epoch != got[i-1].Epoch+1 || got[i].Time.IsZero() {
			t.Fatalf("events out of order or without a time at %d: %+v", i, got[i])
		}
	}
}

func view(epoch uint64, master string, members ...string) failover.View {
	v := failover.View{Epoch: epoch, Master: master}
	for i, m := range members {
		v.Members = append(v.Members, failover.Member{ID: m, JoinEpoch: uint64(i + 1)})
	}
	return v
}

// TestViewAndRoleCounters: the views a node applies and its role changes
// make its events, failover counters and time without a master.
func TestViewAndRoleCounters(t *testing.T) {
	g := &Group{cfg: Config{Self: "b"}}
	v1 := view(1, "a", "a")
	g.viewApplied(failover.View{}, v1)
	v2 := view(2, "a", "a", "b")
	g.viewApplied(v1, v2)
	v3 := view(3, "", "b") // a left; no master
	v3.Members[0].JoinEpoch = 2
	v3.LostMaster, v3.LostQueues = "a", []string{"ha.q"}
	g.viewApplied(v2, v3)
	if g.counters.since.IsZero() {
		t.Fatal("a view without a master did not start the masterless spell")
	}
	g.counters.since = g.counters.since.Add(-1500 * time.Millisecond) // as if 1.5s went by
	v4 := view(4, "b", "b")
	v4.Members[0].JoinEpoch = 2
	g.viewApplied(v3, v4)
	g.roleApplied(failover.RoleMirror, failover.RolePromoting, 4)
	g.roleApplied(failover.RolePromoting, failover.RoleMaster, 4)
	g.roleApplied(failover.RoleMaster, failover.RoleFenced, 4)
	g.roleApplied(failover.RoleFenced, failover.RoleMaster, 4) // serving again: no promotion

	c := &g.counters
	if c.promotions != 1 || c.fences != 1 || c.masterChanges != 0 {
		t.Errorf("promotions %d fences %d master changes %d; want 1, 1, 0 (a → none → b is no direct change)", c.promotions, c.fences, c.masterChanges)
	}
	if c.masterless < 1500*time.Millisecond || c.masterless > time.Minute || !c.since.IsZero() {
		t.Errorf("masterless %v (spell since %v); want about 1.5s, closed", c.masterless, c.since)
	}
	g.viewApplied(v4, view(5, "a", "a", "b"))
	if c.masterChanges != 1 {
		t.Errorf("master b → a: %d master changes, want 1", c.masterChanges)
	}
	var texts []string
	for _, e := range g.Events() {
		texts = append(texts, fmt.Sprintf("%s %d %s", e.Kind, e.Epoch, e.Text))
	}
	all := strings.Join(texts, "\n")
	for _, want := range []string{
		"view 1 members a@1; joined a@1",
		"master 1 master a",
		"view 2 members a@1, b@2; joined b@2",
		"view 3 members b@2; left a@1",
		"no-master 3 no master (was a); waiting for a, the only holder of ha.q",
		"master 4 master b",
		"role 4 b: promoting → master",
		"fence 4 b: master → fenced",
		"master 5 master b → a",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("events lack %q:\n%s", want, all)
		}
	}
}
