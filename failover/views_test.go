package failover

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/mirrorproxy/mirrorproxy/gm"
)

var secret = []byte("raft-test-secret-0123456789")

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) Contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Contains(l.b.Bytes(), []byte(s))
}

type group struct {
	t      *testing.T
	svcs   map[string]*Service
	voters []Voter
	lns    map[string]net.Listener
	// heartbeat pump: live members "send" heartbeats to every voter
	alive  sync.Map
	stop   chan struct{}
	pumpWG sync.WaitGroup
}

func listen(t *testing.T) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func newGroup(t *testing.T, ids ...string) *group {
	g := &group{t: t, svcs: map[string]*Service{}, lns: map[string]net.Listener{}, stop: make(chan struct{})}
	for _, id := range ids {
		ln := listen(t)
		g.lns[id] = ln
		g.voters = append(g.voters, Voter{ID: id, RaftAddr: ln.Addr().String()})
	}
	for i, id := range ids {
		s, err := Start(Config{
			ID: id, RaftListener: g.lns[id], Auth: gm.AuthConfig{Secret: secret},
			Bootstrap: i == 0, Voters: g.voters,
			FailureTimeout: 600 * time.Millisecond, LeaseDuration: 300 * time.Millisecond,
			CheckInterval: 20 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		g.svcs[id] = s
		g.alive.Store(id, true)
	}
	g.pumpWG.Add(1)
	go func() { // stands in for gm heartbeats between live members
		defer g.pumpWG.Done()
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-g.stop:
				return
			case <-tk.C:
			}
			g.alive.Range(func(k, _ any) bool {
				for _, s := range g.liveSvcs() {
					s.Heard(k.(string))
				}
				return true
			})
		}
	}()
	return g
}

func (g *group) liveSvcs() []*Service {
	var out []*Service
	g.alive.Range(func(k, _ any) bool {
		out = append(out, g.svcs[k.(string)])
		return true
	})
	return out
}

func (g *group) kill(id string) {
	g.alive.Delete(id)
	g.svcs[id].Close()
}

func (g *group) close() {
	close(g.stop)
	g.pumpWG.Wait()
	g.alive.Range(func(k, _ any) bool {
		g.svcs[k.(string)].Close()
		return true
	})
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (g *group) leader() *Service {
	var l *Service
	waitFor(g.t, 10*time.Second, "a raft leader", func() bool {
		for _, s := range g.liveSvcs() {
			if s.IsLeader() {
				l = s
				return true
			}
		}
		return false
	})
	return l
}

func TestViewsFailureRemovesMemberAndElectsOldest(t *testing.T) {
	defer goleak.VerifyNone(t)
	g := newGroup(t, "a", "b", "c")
	defer g.close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l := g.leader()
	for _, id := range []string{"a", "b", "c"} {
		if _, err := l.Join(ctx, Member{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	v, err := l.Apply(ctx, Command{Kind: CmdSetSynced, Queue: "q1", IDs: []string{"a", "b", "c"}})
	if err != nil {
		t.Fatal(err)
	}
	if v.Master != "a" || v.Epoch != 3 {
		t.Fatalf("view %+v", v)
	}
	for _, s := range g.liveSvcs() {
		waitFor(t, 5*time.Second, "view 3 everywhere", func() bool { return s.View().Epoch == 3 })
	}
	// The master (and maybe raft leader) dies.
	g.kill("a")
	for _, s := range g.liveSvcs() {
		waitFor(t, 10*time.Second, "view without a", func() bool {
			_, in := s.View().Member("a")
			return !in && s.View().Epoch >= 4
		})
		if m := s.View().Master; m != "b" {
			t.Fatalf("new master %q, want the oldest synced member b", m)
		}
	}
	// Traffic of views continues: c's lease holds, a join still commits.
	l = g.leader()
	if _, err := l.Join(ctx, Member{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	if !g.svcs["c"].Lease().Valid() || !g.svcs["b"].Lease().Valid() {
		t.Fatal("majority members lost their lease")
	}
}

func TestLeaseLapsesWhenCutOff(t *testing.T) {
	defer goleak.VerifyNone(t)
	g := newGroup(t, "a", "b", "c")
	defer g.close()
	l := g.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := l.Join(ctx, Member{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	// Leave one voter alone: kill the other two.
	var lone string
	for _, id := range []string{"a", "b", "c"} {
		if g.svcs[id] != l {
			lone = id
			break
		}
	}
	for _, id := range []string{"a", "b", "c"} {
		if id != lone {
			g.kill(id)
		}
	}
	s := g.svcs[lone]
	waitFor(t, 5*time.Second, "lone voter's lease to lapse", func() bool { return !s.Lease().Valid() })
	if s.IsLeader() {
		t.Fatal("a voter without a majority is leader")
	}
	if _, err := s.Leave(ctx, "a"); err == nil {
		t.Fatal("a cut-off voter committed a view")
	}
}

func TestRaftRefusesWrongSecret(t *testing.T) {
	defer goleak.VerifyNone(t)
	logs := &lockedBuf{}
	ln := listen(t)
	a, err := Start(Config{ID: "a", RaftListener: ln, Auth: gm.AuthConfig{Secret: secret},
		Bootstrap: true, Voters: []Voter{{ID: "a", RaftAddr: ln.Addr().String()}}, Logger: zerolog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	waitFor(t, 10*time.Second, "leader", a.IsLeader)
	ln2 := listen(t)
	evil, err := Start(Config{ID: "evil", RaftListener: ln2, Auth: gm.AuthConfig{Secret: []byte("wrong-secret-wrong-secret")}})
	if err != nil {
		t.Fatal(err)
	}
	defer evil.Close()
	// The evil voter dials a (as a candidate would); a must refuse it.
	conn, err := evil.stream.Dial(raft.ServerAddress(ln.Addr().String()), time.Second)
	if err == nil {
		conn.Close()
		t.Fatal("handshake with a wrong secret succeeded")
	}
	waitFor(t, 5*time.Second, "refusal logged", func() bool { return logs.Contains("raft peer refused") })
}

// Two sidecars and a witness: the witness votes but never leads (it hears
// no heartbeats), so when a sidecar dies the other one, as leader, detects
// it and commits the view without it.
func TestWitnessVotesButNeverLeads(t *testing.T) {
	defer goleak.VerifyNone(t)
	ids := []string{"w", "a", "b"} // the witness bootstraps, so it is likely elected first
	lns := map[string]net.Listener{}
	var voters []Voter
	for _, id := range ids {
		lns[id] = listen(t)
		voters = append(voters, Voter{ID: id, RaftAddr: lns[id].Addr().String()})
	}
	svcs := map[string]*Service{}
	for i, id := range ids {
		s, err := Start(Config{
			ID: id, RaftListener: lns[id], Auth: gm.AuthConfig{Secret: secret},
			Bootstrap: i == 0, Voters: voters, Witness: id == "w",
			FailureTimeout: 600 * time.Millisecond, LeaseDuration: 300 * time.Millisecond,
			CheckInterval: 20 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		svcs[id] = s
	}
	var alive sync.Map
	alive.Store("a", true)
	alive.Store("b", true)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // gm heartbeats between the sidecars only: the witness hears none
		defer wg.Done()
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
			}
			alive.Range(func(k, _ any) bool {
				alive.Range(func(to, _ any) bool {
					svcs[to.(string)].Heard(k.(string))
					return true
				})
				return true
			})
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
		for _, s := range svcs {
			s.Close()
		}
	}()
	sidecarLeader := func() *Service {
		var l *Service
		waitFor(t, 10*time.Second, "a sidecar leads raft", func() bool {
			if svcs["w"].IsLeader() {
				return false
			}
			for _, id := range []string{"a", "b"} {
				if _, ok := alive.Load(id); ok && svcs[id].IsLeader() {
					l = svcs[id]
					return true
				}
			}
			return false
		})
		return l
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l := sidecarLeader()
	for _, id := range []string{"a", "b"} {
		if _, err := l.Join(ctx, Member{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	// Longer than the failure timeout: nobody is removed for not being
	// heard by the witness.
	until := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(until) {
		if v := l.View(); len(v.Members) != 2 {
			t.Fatalf("members removed while all were alive: %+v", v)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Either sidecar dies; the survivor (with the witness's vote) removes it.
	victim := "a"
	if l == svcs["a"] {
		victim = "b"
	}
	alive.Delete(victim)
	svcs[victim].Close() // closing twice at the end is harmless
	survivor := "a"
	if victim == "a" {
		survivor = "b"
	}
	waitFor(t, 10*time.Second, "the survivor commits a view without the dead sidecar", func() bool {
		v := svcs[survivor].View()
		_, in := v.Member(victim)
		return !in && v.Master == survivor
	})
	if svcs["w"].IsLeader() {
		t.Fatal("the witness leads")
	}
}
