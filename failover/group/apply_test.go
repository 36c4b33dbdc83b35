package group

import (
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
	mu      sync.Mutex
	applied map[gm.Member]uint64
	calls   int
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
// applied prefix; an op that failed counts as applied and is counted.
func TestApplierReportsAppliedPrefix(t *testing.T) {
	defer goleak.VerifyNone(t)
	mir, rep := &fakeMirror{}, &fakeGM{applied: map[gm.Member]uint64{}}
	a := newApplier(mir, rep, nil, zerolog.Nop())
	defer func() { a.stop(); a.wait() }()
	m := gm.Member{ID: "master", Inc: 1}
	for seq := uint64(1); seq <= 4; seq++ {
		a.deliver(gm.Op{Sender: m, Seq: seq, Data: []byte{byte(seq)}})
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
	if got := rep.get(m); got != 4 {
		t.Fatalf("applied %d, want 4", got)
	}
	if a.failures() != 1 {
		t.Fatalf("failures %d, want 1", a.failures())
	}
}

type testErr struct{}

func (testErr) Error() string { return "test failure" }

var errTest error = testErr{}
