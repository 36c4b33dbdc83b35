package gm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestNodeStats: a node counts its ops proposed and stable, times them in
// the latency histogram, reports its window's occupancy, and how far each
// other member is behind on its stream — in ops and in age of the oldest
// op it has not applied.
func TestNodeStats(t *testing.T) {
	defer goleak.VerifyNone(t)
	ids := []string{"m0", "m1", "m2"}
	v := View{Epoch: 1}
	for _, id := range ids {
		v.Members = append(v.Members, Member{ID: id, Inc: 1})
	}
	c := newCluster(t, ids, testSecret, nil)
	defer c.closeAll()
	// m2 delivers but holds its applies until released.
	var mu sync.Mutex
	var held []Op
	hold := true
	slow := c.nodes["m2"]
	c.apps["m2"].node = nil
	c.nodes["m2"].cfg.Deliver = func(op Op) {
		mu.Lock()
		defer mu.Unlock()
		if hold {
			held = append(held, op)
			return
		}
		slow.Applied(op.Sender, op.Seq)
	}
	c.install(v)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sender := c.nodes["m0"]
	st, err := sender.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Epoch != 1 || !st.Member || st.Proposed != 0 || st.Stable != 0 || st.Window != 256 || len(st.Lags) != 2 {
		t.Fatalf("stats before any op = %+v", st)
	}
	const ops = 10
	for i := range ops {
		if _, err := sender.Propose(ctx, fmt.Appendf(nil, "op %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "m2 has every op delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(held) == ops
	})
	eventually(t, 10*time.Second, "m1's applies reach m0", func() bool {
		st, err = sender.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range st.Lags {
			if l.Member.ID == "m1" && l.Ops != 0 {
				return false
			}
		}
		return true
	})
	if st.Proposed != ops || st.Stable != 0 || st.InFlight != ops || st.Latency.Count != 0 {
		t.Errorf("while m2 holds its applies: proposed %d stable %d in flight %d latency count %d; want %d, 0, %d, 0",
			st.Proposed, st.Stable, st.InFlight, st.Latency.Count, ops, ops)
	}
	for _, l := range st.Lags {
		switch l.Member.ID {
		case "m1":
			if l.Ops != 0 || l.Age != 0 {
				t.Errorf("m1 applied everything but lags %+v", l)
			}
		case "m2":
			if l.Ops != ops || l.Age <= 0 {
				t.Errorf("m2 applied nothing: lag %+v, want %d ops and an age", l, ops)
			}
		default:
			t.Errorf("lag of %v: only the other members lag", l.Member)
		}
	}
	mu.Lock()
	hold = false
	for _, op := range held {
		slow.Applied(op.Sender, op.Seq)
	}
	mu.Unlock()
	if err := sender.WaitStable(ctx, ops); err != nil {
		t.Fatal(err)
	}
	st, err = sender.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Stable != ops || st.InFlight != 0 || st.Latency.Count != ops || st.Latency.Sum <= 0 {
		t.Errorf("after release: stable %d in flight %d latency %+v; want %d stable, none in flight, %d timed", st.Stable, st.InFlight, st.Latency, ops, ops)
	}
	var sum uint64
	for _, n := range st.Latency.Counts {
		sum += n
	}
	if sum != ops || len(st.Latency.Counts) != len(LatencyBuckets)+1 {
		t.Errorf("histogram counts %v do not add up to %d", st.Latency.Counts, ops)
	}
	for _, l := range st.Lags {
		if l.Ops != 0 {
			t.Errorf("after release %s still lags %d ops", l.Member, l.Ops)
		}
	}
	// A closed node answers no more.
	sender.Close()
	if _, err := sender.Stats(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Stats after Close: %v, want ErrClosed", err)
	}
}

// TestNodeStatsFailsWhenWedged: a node whose goroutine is stuck (here in
// an application Deliver that never returns) does not answer Stats within
// the caller's deadline: that is how a liveness probe sees it wedged.
func TestNodeStatsFailsWhenWedged(t *testing.T) {
	defer goleak.VerifyNone(t)
	ids := []string{"m0", "m1"}
	v := View{Epoch: 1, Members: []Member{{ID: "m0", Inc: 1}, {ID: "m1", Inc: 1}}}
	c := newCluster(t, ids, testSecret, nil)
	defer c.closeAll()
	release := make(chan struct{})
	stuck := make(chan struct{}, 1)
	c.nodes["m1"].cfg.Deliver = func(Op) {
		select {
		case stuck <- struct{}{}:
		default:
		}
		<-release
	}
	c.install(v)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.nodes["m1"].Stats(ctx); err != nil {
		t.Fatalf("a running node's Stats: %v", err)
	}
	if _, err := c.nodes["m0"].Propose(ctx, []byte("op")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-stuck:
	case <-ctx.Done():
		t.Fatal("the op never reached m1")
	}
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err := c.nodes["m1"].Stats(short)
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Stats of a wedged node: %v, want the deadline exceeded", err)
	}
	close(release)
	if _, err := c.nodes["m1"].Stats(ctx); err != nil {
		t.Errorf("Stats once the node runs again: %v", err)
	}
}
