package failover

import "testing"

// A join repeated by the same process (the role asks again until it hears
// the answer) is not a new incarnation; a new process is.
func TestJoinRepeatedBySameProcess(t *testing.T) {
	v, err := Next(View{}, Command{Kind: CmdJoin, Member: Member{ID: "a", Boot: "p1"}})
	if err != nil || v.Master != "a" || v.Epoch != 1 {
		t.Fatalf("first join: %+v %v", v, err)
	}
	v, _ = Next(v, Command{Kind: CmdJoin, Member: Member{ID: "b", Boot: "p2"}})
	again, err := Next(v, Command{Kind: CmdJoin, Member: Member{ID: "a", Boot: "p1"}})
	if err != nil || again.Epoch != v.Epoch || again.Master != "a" {
		t.Fatalf("repeated join changed the view: %+v %v", again, err)
	}
	restarted, err := Next(v, Command{Kind: CmdJoin, Member: Member{ID: "a", Boot: "p3"}})
	if err != nil || restarted.Epoch != v.Epoch+1 || restarted.Master != "b" {
		t.Fatalf("a restarted master's join: %+v %v; want a new incarnation and b master", restarted, err)
	}
	if m, _ := restarted.Member("a"); m.JoinEpoch != restarted.Epoch {
		t.Fatalf("restarted a has JoinEpoch %d, want %d", m.JoinEpoch, restarted.Epoch)
	}
}
