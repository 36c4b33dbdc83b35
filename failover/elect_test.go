package failover

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"testing"
)

func TestElect(t *testing.T) {
	abc := []Member{mem("a", 1), mem("b", 2), mem("c", 3)}
	for _, c := range []struct {
		name     string
		members  []Member
		synced   map[string][]string
		mirrors  map[string][]string
		progress Progress
		allow    bool
		want     Election
	}{
		{name: "no members", want: Election{}},
		{name: "no queues: most applied", members: abc, progress: Progress{"b": 1, "c": 2},
			want: Election{Master: "c"}},
		{name: "no queues: ties to the oldest", members: abc, progress: Progress{"b": 2, "c": 2},
			want: Election{Master: "b"}},
		{name: "same age: ring order", members: []Member{mem("x", 1), mem("y", 1)},
			want: Election{Master: "x"}},
		{name: "an unmirrored queue (empty synced set) blocks nothing", members: abc,
			synced: map[string][]string{"q0": {}, "q1": {"b", "c"}}, progress: Progress{"c": 3},
			want: Election{Master: "c"}},
		{name: "mirrors listed, none synced: no master", members: abc,
			synced: map[string][]string{"q1": {}}, mirrors: map[string][]string{"q1": {"b"}},
			want: Election{}},
		{name: "mirrors listed, none synced, allowed", members: abc, allow: true,
			synced: map[string][]string{"q1": {}}, mirrors: map[string][]string{"q1": {"b"}}, progress: Progress{"c": 1},
			want: Election{Master: "c", Unsynced: []string{"q1"}}},
		{name: "synced for all beats more applied", members: abc, allow: true,
			synced: map[string][]string{"q1": {"a", "c"}, "q2": {"a"}}, progress: Progress{"a": 1, "c": 9},
			want: Election{Master: "a"}},
		{name: "the member synced for the most queues", members: abc, allow: true,
			synced:   map[string][]string{"q1": {"b"}, "q2": {"c"}, "q3": {"c"}},
			progress: Progress{"b": 9},
			want:     Election{Master: "c", Unsynced: []string{"q1"}}},
		{name: "as many queues: the most applied", members: abc, allow: true,
			synced:   map[string][]string{"q1": {"b"}, "q2": {"c"}},
			progress: Progress{"b": 1, "c": 2},
			want:     Election{Master: "c", Unsynced: []string{"q1"}}},
		{name: "as many queues, as applied: the oldest", members: abc, allow: true,
			synced: map[string][]string{"q1": {"c"}, "q2": {"b"}},
			want:   Election{Master: "b", Unsynced: []string{"q1"}}},
		{name: "not allowed: none", members: abc,
			synced: map[string][]string{"q1": {"b"}, "q2": {"c"}},
			want:   Election{}},
		{name: "a departed synced mirror keeps its queue mirrored", members: abc[1:], allow: true,
			synced: map[string][]string{"q1": {"a"}}, progress: Progress{"b": 1},
			want: Election{Master: "b", Unsynced: []string{"q1"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := View{Members: c.members, Synced: c.synced, Mirrors: c.mirrors}
			got := Elect(v, c.progress, c.allow)
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
			if again := Elect(v.clone(), c.progress, c.allow); !reflect.DeepEqual(again, got) {
				t.Fatalf("not deterministic: %+v then %+v", got, again)
			}
		})
	}
}

func TestMirrored(t *testing.T) {
	v := View{
		Synced:  map[string][]string{"legacy-unmirrored": {}, "legacy-mirrored": {"b"}, "placed": {}},
		Mirrors: map[string][]string{"placed": {"b"}, "only-mirrors": {"c"}},
	}
	if got, want := v.MirroredQueues(), []string{"legacy-mirrored", "only-mirrors", "placed"}; !slices.Equal(got, want) {
		t.Fatalf("mirrored %v, want %v", got, want)
	}
	if got, want := v.UnsyncedFor("b"), []string{"only-mirrors", "placed"}; !slices.Equal(got, want) {
		t.Fatalf("unsynced for b %v, want %v", got, want)
	}
}

// abcView: a master of b and c, q1 mirrored on b and c (both synced), q2 on
// b only (synced), q0 unmirrored.
func abcView(t *testing.T) View {
	t.Helper()
	var v View
	for _, id := range []string{"a", "b", "c"} {
		v = mustNext(t, v, Command{Kind: CmdJoin, Member: Member{ID: id}})
	}
	v = mustNext(t, v, Command{Kind: CmdSetSynced, Queue: "q0"})
	v = mustNext(t, v, Command{Kind: CmdSetSynced, Queue: "q1", IDs: []string{"b", "c"}, Mirrors: []string{"b", "c"}})
	v = mustNext(t, v, Command{Kind: CmdSetSynced, Queue: "q2", IDs: []string{"b"}, Mirrors: []string{"b", "x"}})
	return v
}

func TestNextElection(t *testing.T) {
	v := abcView(t)
	if v.Master != "a" || v.MasterEpoch != 1 || v.Epoch != 3 {
		t.Fatalf("after joins: %+v", v)
	}
	if !slices.Equal(v.Mirrors["q2"], []string{"b"}) || v.Mirrors["q0"] != nil {
		t.Fatalf("mirrors are kept to members, none for q0: %v", v.Mirrors)
	}
	// Master fails: b is synced for both mirrored queues, c only for q1.
	n := mustNext(t, v, Command{Kind: CmdRemove, IDs: []string{"a"}, Progress: Progress{"c": 9}})
	if n.Master != "b" || n.MasterEpoch != 4 || len(n.MasterUnsynced) != 0 {
		t.Fatalf("b should win: %+v", n)
	}
	if !slices.Equal(n.Synced["q1"], []string{"c"}) || n.Mirrors["q2"] != nil {
		t.Fatalf("the new master is no mirror: %+v", n)
	}
	// A membership change keeps MasterEpoch.
	if m := mustNext(t, n, Command{Kind: CmdJoin, Member: Member{ID: "d"}}); m.Master != "b" || m.MasterEpoch != 4 {
		t.Fatalf("join changed the mastership: %+v", m)
	}
	// Master and q2's only mirror fail together: q2 still counts.
	if n := mustNext(t, v, Command{Kind: CmdRemove, IDs: []string{"a", "b"}}); n.Master != "" || n.MasterEpoch != 4 {
		t.Fatalf("strict: no master may be elected: %+v", n)
	}
	n = mustNext(t, v, Command{Kind: CmdRemove, IDs: []string{"a", "b"}, PromoteUnsynced: true})
	if n.Master != "c" || !slices.Equal(n.MasterUnsynced, []string{"q2"}) {
		t.Fatalf("promote-unsynced: %+v", n)
	}
	if n.Mirrors["q2"] != nil || len(n.Synced["q2"]) != 0 {
		t.Fatalf("departed members stay in the sets: %+v", n)
	}
	// A later election adds to the list; forcing or deleting a queue
	// takes it out.
	n = mustNext(t, n, Command{Kind: CmdJoin, Member: Member{ID: "d"}})
	n = mustNext(t, n, Command{Kind: CmdSetSynced, Queue: "q3", Mirrors: []string{"d"}})
	n = mustNext(t, n, Command{Kind: CmdRemove, IDs: []string{"c"}, PromoteUnsynced: true})
	if n.Master != "d" || !slices.Equal(n.MasterUnsynced, []string{"q2", "q3"}) {
		t.Fatalf("second election: %+v", n)
	}
	f := mustNext(t, n, Command{Kind: CmdForceQueue, Queue: "q3"})
	if !slices.Equal(f.MasterUnsynced, []string{"q2"}) || f.Epoch != n.Epoch {
		t.Fatalf("force-queue: %+v", f)
	}
	if _, err := Next(f, Command{Kind: CmdForceQueue, Queue: "q3"}); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("forcing a queue that is not unsynced: %v", err)
	}
	g := mustNext(t, f, Command{Kind: CmdForgetSynced, Queue: "q2"})
	if len(g.MasterUnsynced) != 0 || g.Synced["q2"] != nil || g.Mirrors["q2"] != nil {
		t.Fatalf("forget-synced: %+v", g)
	}
	// Next did not touch its input.
	if v.Master != "a" || len(v.Members) != 3 || !slices.Equal(v.Mirrors["q1"], []string{"b", "c"}) {
		t.Fatalf("input view changed: %+v", v)
	}
}

func TestNextRejoiningMasterKeepsItsQueuesMirrored(t *testing.T) {
	v := abcView(t)
	// a restarts and rejoins: it loses the role; q1 and q2 still count.
	n := mustNext(t, v, Command{Kind: CmdJoin, Member: Member{ID: "a"}})
	if n.Master != "b" || n.MasterEpoch != 4 || n.Members[2] != mem("a", 4) {
		t.Fatalf("rejoin: %+v", n)
	}
	// Sole member rejoining: master again.
	var s View
	s = mustNext(t, s, Command{Kind: CmdJoin, Member: Member{ID: "a"}})
	s = mustNext(t, s, Command{Kind: CmdJoin, Member: Member{ID: "a"}})
	if s.Master != "a" || s.MasterEpoch != 2 || s.Members[0] != mem("a", 2) {
		t.Fatalf("sole rejoin: %+v", s)
	}
}

func TestNextHandover(t *testing.T) {
	v := abcView(t)
	if _, err := Next(v, Command{Kind: CmdHandover, IDs: []string{"c"}}); !errors.Is(err, ErrNotSynced) {
		t.Fatalf("c lacks q2: %v", err)
	}
	h := mustNext(t, v, Command{Kind: CmdHandover, IfEpoch: v.Epoch, IDs: []string{"b"}})
	if h.Master != "b" || h.Epoch != v.Epoch+1 || h.MasterEpoch != h.Epoch {
		t.Fatalf("handover: %+v", h)
	}
	// The master asking to stay: epoch moves, mastership does not, and a
	// handover decided at the old epoch is void.
	k := mustNext(t, v, Command{Kind: CmdHandover, IfEpoch: v.Epoch, IDs: []string{"a"}})
	if k.Master != "a" || k.Epoch != v.Epoch+1 || k.MasterEpoch != v.MasterEpoch {
		t.Fatalf("keep: %+v", k)
	}
	if _, err := Next(k, Command{Kind: CmdHandover, IfEpoch: v.Epoch, IDs: []string{"b"}}); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("stale handover: %v", err)
	}
	// An unmirrored queue does not stop a handover.
	u := mustNext(t, v, Command{Kind: CmdSetSynced, Queue: "q2", IDs: []string{"b", "c"}, Mirrors: []string{"b", "c"}})
	if h := mustNext(t, u, Command{Kind: CmdHandover, IDs: []string{"c"}}); h.Master != "c" {
		t.Fatalf("handover with q0 unmirrored: %+v", h)
	}
}

func TestViewJSONCompatible(t *testing.T) {
	// A view written before Mirrors, MasterEpoch and MasterUnsynced: an
	// unmirrored queue has an empty synced set and must not block.
	old := `{"epoch":5,"members":[{"id":"a","gm_addr":"","raft_addr":"","join_epoch":1},{"id":"b","gm_addr":"","raft_addr":"","join_epoch":2}],"master":"a","synced":{"q0":[],"q1":["b"]}}`
	var v View
	if err := json.Unmarshal([]byte(old), &v); err != nil {
		t.Fatal(err)
	}
	n := mustNext(t, v, Command{Kind: CmdRemove, IDs: []string{"a"}})
	if n.Master != "b" {
		t.Fatalf("legacy view: %+v", n)
	}
	b, err := json.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	var back View
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, n) {
		t.Fatalf("round trip: %v\n%+v\n%+v", err, back, n)
	}
	// A command without the new fields still applies.
	var cmd Command
	if err := json.Unmarshal([]byte(`{"kind":"set-synced","queue":"q1","ids":["b"]}`), &cmd); err != nil {
		t.Fatal(err)
	}
	if s := mustNext(t, v, cmd); !slices.Equal(s.Synced["q1"], []string{"b"}) || s.Mirrors != nil {
		t.Fatalf("legacy set-synced: %+v", s)
	}
}

// F1 (docs/RELIABILITY.md): the master leaves with no member synced to
// succeed it, then the unsynced survivors leave and rejoin. No one but the
// lost master may be master again: the others would serve its queues
// without the messages only its broker holds.
func TestNextWaitsForTheLostMaster(t *testing.T) {
	v := abcView(t) // a master; q1 synced on b and c
	v = mustNext(t, v, Command{Kind: CmdSetSynced, Queue: "q2", IDs: []string{"b"}, Mirrors: []string{"b", "c"}})
	v = mustNext(t, v, Command{Kind: CmdRemove, IDs: []string{"b"}})
	if v.Master != "a" {
		t.Fatalf("a mirror left: %+v", v)
	}
	// a leaves: c lacks q2, so no master; the view remembers a and q2 (q1
	// too: c is synced for it, but a is the one holding every queue).
	v = mustNext(t, v, Command{Kind: CmdRemove, IDs: []string{"a"}})
	if v.Master != "" || v.LostMaster != "a" || !slices.Equal(v.LostQueues, []string{"q1", "q2"}) {
		t.Fatalf("master lost: %+v", v)
	}
	// c rejoins from empty while alone (the sole-member rule used to make
	// it master), then b rejoins: still no master.
	w := mustNext(t, v, Command{Kind: CmdJoin, Member: Member{ID: "c"}})
	w = mustNext(t, w, Command{Kind: CmdJoin, Member: Member{ID: "b"}})
	if w.Master != "" || w.LostMaster != "a" || len(w.Members) != 2 {
		t.Fatalf("unsynced members rejoined: %+v", w)
	}
	// a comes back: master again, its queues still mirrored on b and c
	// once the master pushes its synced sets; nothing recorded as lost.
	x := mustNext(t, w, Command{Kind: CmdJoin, Member: Member{ID: "a"}})
	if x.Master != "a" || x.MasterEpoch != x.Epoch || x.LostMaster != "" || x.LostQueues != nil || len(x.MasterUnsynced) != 0 {
		t.Fatalf("lost master back: %+v", x)
	}
	// ha-promote-on-failure: always elects another and records the loss.
	p := mustNext(t, w, Command{Kind: CmdJoin, Member: Member{ID: "x"}, PromoteUnsynced: true})
	if p.Master == "" || p.Master == "a" || !slices.Equal(p.MasterUnsynced, []string{"q1", "q2"}) || p.LostMaster != "" {
		t.Fatalf("promote unsynced: %+v", p)
	}
	// With no mirrored queue there is nothing to wait for.
	var s View
	s = mustNext(t, s, Command{Kind: CmdJoin, Member: Member{ID: "a"}})
	s = mustNext(t, s, Command{Kind: CmdJoin, Member: Member{ID: "b"}})
	s = mustNext(t, s, Command{Kind: CmdRemove, IDs: []string{"a"}})
	if s.Master != "b" || s.LostMaster != "" {
		t.Fatalf("no mirrored queue: %+v", s)
	}
}

// A restarted master with no synced mirror stays master: its broker holds
// what no member has.
func TestNextRejoiningMasterWithoutSyncedMirror(t *testing.T) {
	v := abcView(t)
	v = mustNext(t, v, Command{Kind: CmdSetSynced, Queue: "q1", IDs: nil, Mirrors: []string{"b", "c"}})
	v = mustNext(t, v, Command{Kind: CmdSetSynced, Queue: "q2", IDs: nil, Mirrors: []string{"b"}})
	for _, promote := range []bool{false, true} {
		n := mustNext(t, v, Command{Kind: CmdJoin, Member: Member{ID: "a"}, PromoteUnsynced: promote})
		if n.Master != "a" || n.MasterEpoch != n.Epoch || len(n.MasterUnsynced) != 0 {
			t.Fatalf("promote %v: %+v", promote, n)
		}
	}
}
