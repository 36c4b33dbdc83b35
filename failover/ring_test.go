package failover

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mirrorproxy/mirrorproxy/gm"
)

// sidecar is one member end to end: a raft voter and a gm node, wired as
// the product does (heartbeats feed the detector, committed views go to gm).
type sidecar struct {
	id   string
	svc  *Service
	node *gm.Node
	mu   sync.Mutex
	got  map[gm.Member][]uint64
}

func (sc *sidecar) delivered(s gm.Member) []uint64 {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return append([]uint64(nil), sc.got[s]...)
}

func TestViewsDriveGMRing(t *testing.T) {
	defer goleak.VerifyNone(t)
	ids := []string{"s0", "s1", "s2"}
	var addrs sync.Map
	raftLns := map[string]net.Listener{}
	var voters []Voter
	for _, id := range ids {
		raftLns[id] = listen(t)
		voters = append(voters, Voter{ID: id, RaftAddr: raftLns[id].Addr().String()})
	}
	auth := gm.AuthConfig{Secret: secret}
	scs := map[string]*sidecar{}
	for i, id := range ids {
		sc := &sidecar{id: id, got: map[gm.Member][]uint64{}}
		gmLn := listen(t)
		addrs.Store(id, gmLn.Addr().String())
		var err error
		sc.node, err = gm.StartNode(gm.NodeConfig{
			ID: id, Listener: gmLn, Auth: auth,
			Resolve: func(id string) string { v, _ := addrs.Load(id); s, _ := v.(string); return s },
			Ring:    gm.Config{Window: 128},
			Deliver: func(op gm.Op) {
				sc.mu.Lock()
				sc.got[op.Sender] = append(sc.got[op.Sender], op.Seq)
				sc.mu.Unlock()
				sc.node.Applied(op.Sender, op.Seq)
			},
			OnHeartbeat:       func(peer string) { sc.svc.Heard(peer) },
			TickInterval:      5 * time.Millisecond,
			HeartbeatInterval: 30 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		sc.svc, err = Start(Config{
			ID: id, RaftListener: raftLns[id], Auth: auth, Bootstrap: i == 0, Voters: voters,
			FailureTimeout: 500 * time.Millisecond, LeaseDuration: 250 * time.Millisecond,
			CheckInterval: 20 * time.Millisecond,
			OnView:        func(v View) { sc.node.InstallView(v.GM()) },
		})
		if err != nil {
			t.Fatal(err)
		}
		scs[id] = sc
	}
	closeSC := func(sc *sidecar) {
		sc.svc.Close()
		sc.node.Close()
	}
	defer func() {
		for _, sc := range scs {
			closeSC(sc)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var leader *Service
	waitFor(t, 10*time.Second, "raft leader", func() bool {
		for _, sc := range scs {
			if sc.svc.IsLeader() {
				leader = sc.svc
				return true
			}
		}
		return false
	})
	for _, id := range ids {
		if _, err := leader.Join(ctx, Member{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	master := scs["s0"]
	if err := master.node.WaitEpoch(ctx, 3); err != nil {
		t.Fatal(err)
	}
	_, self := master.node.View()
	var last uint64
	for i := range 300 {
		var err error
		if last, err = master.node.Propose(ctx, fmt.Appendf(nil, "op%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := master.node.WaitStable(ctx, last); err != nil {
		t.Fatal(err)
	}
	// Kill s1 entirely (raft voter and gm node, connections dropped). Nobody
	// tells the view service: heartbeats stop, the leader removes it, gm
	// installs the new view, and the master's traffic flows again.
	closeSC(scs["s1"])
	delete(scs, "s1")
	for i := range 300 {
		var err error
		if last, err = master.node.Propose(ctx, fmt.Appendf(nil, "after%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := master.node.WaitStable(ctx, last); err != nil {
		t.Fatal(err)
	}
	v, _ := master.node.View()
	if v.Epoch < 4 || v.Contains(gm.Member{ID: "s1", Inc: 2}) {
		t.Fatalf("gm view %+v still has the dead member", v)
	}
	if got := scs["s2"].delivered(self); len(got) != int(last) || got[len(got)-1] != last {
		t.Fatalf("s2 delivered %d ops, want 1..%d", len(got), last)
	}
	if !master.svc.Lease().Valid() {
		t.Fatal("master in the majority lost its lease")
	}
}
