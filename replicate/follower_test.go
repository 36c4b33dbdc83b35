package replicate

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/mirrorproxy/mirrorproxy/gm"
)

// fakeMirror keeps each op's done to be called by the test.
type fakeMirror struct {
	mu    sync.Mutex
	dones []func(error)
}

func (f *fakeMirror) Apply(_ []byte, done func(error)) {
	f.mu.Lock()
	f.dones = append(f.dones, done)
	f.mu.Unlock()
}

func (f *fakeMirror) done(i int, err error) {
	f.mu.Lock()
	d := f.dones[i]
	f.mu.Unlock()
	d(err)
}

func (f *fakeMirror) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.dones)
}

type fakeGM struct {
	mu       sync.Mutex
	applied  map[gm.Member]uint64
	calls    int
	proposed [][]byte
}

func (f *fakeGM) Propose(_ context.Context, data []byte) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.proposed = append(f.proposed, data)
	return uint64(len(f.proposed)), nil
}

func (f *fakeGM) WaitStable(context.Context, uint64) error { return nil }

func (f *fakeGM) reports() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.proposed...)
}

func (f *fakeGM) Applied(s gm.Member, seq uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if seq < f.applied[s] {
		panic("applied went backwards")
	}
	f.applied[s] = seq
	f.calls++
}

func (f *fakeGM) get(s gm.Member) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied[s]
}

// Dones arrive out of op order (different vhosts): gm hears only the
// applied prefix; an op that failed counts as applied, once the master has
// the mirror's report of it, and is counted.
func TestFollowerReportsAppliedPrefix(t *testing.T) {
	defer goleak.VerifyNone(t)
	mir, rep := &fakeMirror{}, &fakeGM{applied: map[gm.Member]uint64{}}
	a := newFollower(mir, rep, "node-2", zerolog.Nop())
	defer func() { a.Stop(); a.Wait() }()
	m := gm.Member{ID: "master", Inc: 1}
	ack := AppendOp(nil, &Op{Kind: OpAck, Vhost: "/", Queue: "q1", IDs: []uint64{7}})
	for seq := uint64(1); seq <= 4; seq++ {
		data := []byte{byte(seq)}
		if seq == 3 {
			data = ack
		}
		a.Deliver(gm.Op{Sender: m, Seq: seq, Data: data})
	}
	deadline := time.Now().Add(5 * time.Second)
	for mir.count() < 4 {
		if time.Now().After(deadline) {
			t.Fatal("ops not given to the mirror")
		}
		time.Sleep(time.Millisecond)
	}
	mir.done(1, nil) // op 2 before op 1
	mir.done(3, nil) // op 4
	if got := rep.get(m); got != 0 {
		t.Fatalf("applied %d before op 1 was done", got)
	}
	mir.done(0, nil)
	if got := rep.get(m); got != 2 {
		t.Fatalf("applied %d, want 2 (op 3 not done)", got)
	}
	mir.done(2, errTest)
	deadline = time.Now().Add(5 * time.Second)
	for rep.get(m) != 4 {
		if time.Now().After(deadline) {
			t.Fatalf("applied %d, want 4 once the failure was reported", rep.get(m))
		}
		time.Sleep(time.Millisecond)
	}
	if a.Failures() != 1 {
		t.Fatalf("failures %d, want 1", a.Failures())
	}
	reports := rep.reports()
	if len(reports) != 1 {
		t.Fatalf("%d status reports, want 1", len(reports))
	}
	st, err := ParseOp(reports[0])
	if err != nil || st.Kind != OpStatus || st.Queue != "q1" || len(st.Nodes) != 1 || st.Nodes[0] != "node-2" {
		t.Fatalf("report %+v (%v), want a status op naming node-2 and q1", st, err)
	}
}

type testErr struct{}

func (testErr) Error() string { return "test failure" }

var errTest error = testErr{}
