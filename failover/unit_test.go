package failover

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/mirrorproxy/mirrorproxy/gm"
)

func mustNext(t *testing.T, v View, c Command) View {
	t.Helper()
	n, err := Next(v, c)
	if err != nil {
		t.Fatalf("%s: %v", c.Kind, err)
	}
	return n
}

func TestNextJoinRemoveElect(t *testing.T) {
	var v View
	for _, id := range []string{"a", "b", "c"} {
		v = mustNext(t, v, Command{Kind: CmdJoin, Member: Member{ID: id}})
	}
	if v.Epoch != 3 || v.Master != "a" || len(v.Members) != 3 || v.Members[2].JoinEpoch != 3 {
		t.Fatalf("after joins: %+v", v)
	}
	v = mustNext(t, v, Command{Kind: CmdSetSynced, Queue: "q", IDs: []string{"a", "b", "c"}})
	// Master fails: b and c synced with equal progress: the oldest (b) wins.
	n := mustNext(t, v, Command{Kind: CmdRemove, IDs: []string{"a"}, Progress: Progress{"b": 5, "c": 5}})
	if n.Master != "b" || n.Epoch != 4 {
		t.Fatalf("tie should go to the oldest: %+v", n)
	}
	// More applied beats older.
	n = mustNext(t, v, Command{Kind: CmdRemove, IDs: []string{"a"}, Progress: Progress{"b": 5, "c": 6}})
	if n.Master != "c" {
		t.Fatalf("most applied should win: %+v", n)
	}
	// Only unsynced mirrors: no master unless promote-on-failure always.
	u := mustNext(t, v, Command{Kind: CmdSetSynced, Queue: "q", IDs: []string{"a"}})
	if n := mustNext(t, u, Command{Kind: CmdRemove, IDs: []string{"a"}}); n.Master != "" {
		t.Fatalf("unsynced promoted: %+v", n)
	}
	if n := mustNext(t, u, Command{Kind: CmdRemove, IDs: []string{"a"}, PromoteUnsynced: true, Progress: Progress{"c": 1}}); n.Master != "c" {
		t.Fatalf("promote-unsynced: %+v", n)
	}
	// A decision on a stale view is void.
	if _, err := Next(v, Command{Kind: CmdRemove, IfEpoch: 1, IDs: []string{"b"}}); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("stale: %v", err)
	}
	// Rejoin: a new incarnation at the end, out of the synced sets.
	r := mustNext(t, v, Command{Kind: CmdJoin, Member: Member{ID: "b"}})
	if r.Members[2].ID != "b" || r.Members[2].JoinEpoch != r.Epoch || slices.Contains(r.Synced["q"], "b") {
		t.Fatalf("rejoin: %+v", r)
	}
	// Handover only to a synced member.
	if _, err := Next(u, Command{Kind: CmdHandover, IDs: []string{"b"}}); !errors.Is(err, ErrNotSynced) {
		t.Fatalf("handover to unsynced: %v", err)
	}
	if h := mustNext(t, v, Command{Kind: CmdHandover, IDs: []string{"c"}}); h.Master != "c" {
		t.Fatalf("handover: %+v", h)
	}
	g := v.GM()
	if g.Epoch != v.Epoch || len(g.Members) != 3 || g.Members[0] != (gm.Member{ID: "a", Inc: 1}) {
		t.Fatalf("gm view: %+v", g)
	}
}

func TestDetector(t *testing.T) {
	t0 := time.Unix(1000, 0)
	d := NewDetector(time.Second)
	d.Watch("a", t0)
	d.Watch("b", t0)
	d.Heard("a", t0.Add(900*time.Millisecond))
	d.Heard("x", t0) // not watched: ignored
	if s := d.Suspects(t0.Add(999 * time.Millisecond)); len(s) != 0 {
		t.Fatalf("early suspects %v", s)
	}
	if s := d.Suspects(t0.Add(time.Second)); !slices.Equal(s, []string{"b"}) {
		t.Fatalf("suspects %v, want [b]", s)
	}
	d.Forget("b")
	if s := d.Suspects(t0.Add(time.Hour)); !slices.Equal(s, []string{"a"}) {
		t.Fatalf("suspects %v, want [a]", s)
	}
}

// A new leader suspects a peer that went silent shortly before the
// election when that peer's own timeout runs out (F6: a frozen master
// sidecar that was the raft leader), and gives a full timeout to peers it
// had not heard for longer.
func TestDetectorLead(t *testing.T) {
	t0 := time.Unix(1000, 0)
	d := NewDetector(2 * time.Second)
	d.Watch("frozen", t0)
	d.Watch("alive", t0)
	d.Watch("stale", t0)
	d.Heard("alive", t0.Add(2500*time.Millisecond))
	d.Heard("frozen", t0.Add(1500*time.Millisecond)) // then nothing
	// "stale" was last heard at t0, 2.6 s before this node leads.
	d.Lead(t0.Add(2600 * time.Millisecond))
	if s := d.Suspects(t0.Add(3499 * time.Millisecond)); len(s) != 0 {
		t.Fatalf("suspects before the frozen peer's timeout: %v", s)
	}
	if s := d.Suspects(t0.Add(3500 * time.Millisecond)); !slices.Equal(s, []string{"frozen"}) {
		t.Fatalf("suspects at the frozen peer's timeout: %v, want [frozen] (not a timeout after the election)", s)
	}
	d.Forget("frozen")
	d.Heard("alive", t0.Add(4*time.Second))
	if s := d.Suspects(t0.Add(4599 * time.Millisecond)); len(s) != 0 {
		t.Fatalf("a peer stale before the election suspected early: %v", s)
	}
	if s := d.Suspects(t0.Add(4600 * time.Millisecond)); !slices.Equal(s, []string{"stale"}) {
		t.Fatalf("suspects a full timeout after the election: %v, want [stale]", s)
	}
}

func TestLease(t *testing.T) {
	now := time.Unix(1000, 0)
	leader, last := false, now.Add(-500*time.Millisecond)
	l := Lease{Duration: time.Second, state: func() (bool, time.Time) { return leader, last }}
	if !l.ValidAt(now) {
		t.Fatal("recent contact: lease should hold")
	}
	if l.ValidAt(now.Add(600 * time.Millisecond)) {
		t.Fatal("lease should lapse a Duration after the last contact")
	}
	last = time.Time{}
	if l.ValidAt(now) {
		t.Fatal("never in contact: no lease")
	}
	leader = true
	if !l.ValidAt(now) {
		t.Fatal("leader holds the lease")
	}
}
