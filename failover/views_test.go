package failover

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"reflect"
	"strings"
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
	ids    []string
	mu     sync.Mutex // guards svcs against restart while the pump reads it
	svcs   map[string]*Service
	voters []Voter
	lns    map[string]net.Listener
	// dirs are the voters' DataDirs (persistent groups only); logs their
	// log output.
	dirs map[string]string
	logs map[string]*lockedBuf
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

// newGroup starts voters ids (the first bootstraps) with in-memory raft
// state.
func newGroup(t *testing.T, ids ...string) *group { return startGroup(t, false, ids...) }

// newPersistentGroup is newGroup with each voter's raft state in its own
// DataDir.
func newPersistentGroup(t *testing.T, ids ...string) *group { return startGroup(t, true, ids...) }

func startGroup(t *testing.T, persist bool, ids ...string) *group {
	g := &group{t: t, ids: ids, svcs: map[string]*Service{}, lns: map[string]net.Listener{},
		logs: map[string]*lockedBuf{}, stop: make(chan struct{})}
	if persist {
		g.dirs = map[string]string{}
	}
	for _, id := range ids {
		ln := listen(t)
		g.lns[id] = ln
		g.voters = append(g.voters, Voter{ID: id, RaftAddr: ln.Addr().String()})
		if persist {
			g.dirs[id] = t.TempDir()
		}
	}
	for _, id := range ids {
		g.start(id, g.lns[id])
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

// start starts voter id on ln (its DataDir, if any) and counts it alive.
func (g *group) start(id string, ln net.Listener) *Service {
	g.t.Helper()
	logs := &lockedBuf{}
	s, err := Start(Config{
		ID: id, RaftListener: ln, Auth: gm.AuthConfig{Secret: secret},
		Bootstrap: id == g.ids[0], Voters: g.voters, DataDir: g.dirs[id],
		FailureTimeout: 600 * time.Millisecond, LeaseDuration: 300 * time.Millisecond,
		CheckInterval: 20 * time.Millisecond, Logger: zerolog.New(logs),
	})
	if err != nil {
		g.t.Fatal(err)
	}
	g.mu.Lock()
	g.svcs[id] = s
	g.logs[id] = logs
	g.mu.Unlock()
	g.alive.Store(id, true)
	return s
}

// restart starts a killed voter again as itself: its DataDir, and a new
// listener on the raft address the raft configuration has for it.
func (g *group) restart(id string) *Service {
	g.t.Helper()
	var addr string
	for _, v := range g.voters {
		if v.ID == id {
			addr = v.RaftAddr
		}
	}
	var ln net.Listener
	waitFor(g.t, 10*time.Second, "listening again on "+addr, func() bool {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	return g.start(id, ln)
}

func (g *group) svc(id string) *Service {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.svcs[id]
}

func (g *group) liveSvcs() []*Service {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []*Service
	g.alive.Range(func(k, _ any) bool {
		out = append(out, g.svcs[k.(string)])
		return true
	})
	return out
}

func (g *group) kill(id string) {
	g.alive.Delete(id)
	if err := g.svc(id).Close(); err != nil {
		g.t.Errorf("closing %s: %v", id, err)
	}
}

func (g *group) close() {
	close(g.stop)
	g.pumpWG.Wait()
	g.alive.Range(func(k, _ any) bool {
		g.svc(k.(string)).Close()
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

// waitView waits until s's view is want.
func waitView(t *testing.T, id string, s *Service, want View) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("%s at view %+v (has %+v)", id, want, s.View()), func() bool {
		return reflect.DeepEqual(s.View(), want)
	})
}

// checkVoters checks that s's raft configuration is the group's voters,
// at their addresses.
func (g *group) checkVoters(id string) {
	g.t.Helper()
	f := g.svc(id).raft.GetConfiguration()
	if err := f.Error(); err != nil {
		g.t.Fatal(err)
	}
	var got []Voter
	for _, srv := range f.Configuration().Servers {
		if srv.Suffrage != raft.Voter {
			g.t.Errorf("%s: server %s is %v", id, srv.ID, srv.Suffrage)
		}
		got = append(got, Voter{ID: string(srv.ID), RaftAddr: string(srv.Address)})
	}
	if !reflect.DeepEqual(got, g.voters) {
		g.t.Fatalf("%s: raft configuration %+v, want %+v", id, got, g.voters)
	}
}

// A voter closed and started again on its DataDir and raft address is the
// same voter: the bootstrap voter does not bootstrap again, it catches up on
// the view committed while it was down without being added again, and it
// counts in the majority.
func TestRestartedVoterRejoinsAsItself(t *testing.T) {
	defer goleak.VerifyNone(t)
	g := newPersistentGroup(t, "a", "b", "c")
	defer g.close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := g.leader()
	for _, id := range g.ids {
		if _, err := l.Join(ctx, Member{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	v, err := l.Apply(ctx, Command{Kind: CmdSetSynced, Queue: "q1", IDs: []string{"a", "b", "c"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range g.ids {
		waitView(t, id, g.svc(id), v)
	}
	// a, the bootstrap voter and master, stops; b and c commit a view
	// without it (b, the oldest synced, becomes master).
	g.kill("a")
	waitFor(t, 10*time.Second, "a view without a", func() bool {
		_, in := g.svc("b").View().Member("a")
		return !in
	})
	down := g.svc("b").View()
	if down.Epoch != 4 || down.Master != "b" {
		t.Fatalf("view without a: %+v", down)
	}
	waitView(t, "c", g.svc("c"), down)

	a := g.restart("a")
	if !g.logs["a"].Contains("not bootstrapping") {
		t.Fatal("the restarted bootstrap voter did not report its raft state")
	}
	waitView(t, "a", a, down)
	for _, id := range g.ids {
		g.checkVoters(id)
	}
	// It is a voter of the majority: its member rejoins the view (a new
	// incarnation, as gm needs), then b stops and a and c alone commit
	// the view without b, whoever leads.
	l = g.leader()
	if _, err := l.Join(ctx, Member{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	g.kill("b")
	waitFor(t, 10*time.Second, "a and c commit a view without b", func() bool {
		v := a.View()
		_, in := v.Member("b")
		return !in && v.Epoch == 6
	})
	after := a.View()
	if m, _ := after.Member("a"); after.Master != "c" || len(after.Members) != 2 || m.JoinEpoch != 5 {
		t.Fatalf("view after b stopped: %+v", after)
	}
	waitView(t, "c", g.svc("c"), after)
}

// A group stopped whole and started again on its DataDirs keeps its last
// view (epoch, members, master, synced sets) and does not bootstrap again:
// one voter restores it from a snapshot at once, the others from their logs
// once a leader is elected.
func TestWholeGroupRestartKeepsView(t *testing.T) {
	defer goleak.VerifyNone(t)
	g := newPersistentGroup(t, "a", "b", "c")
	defer g.close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := g.leader()
	for _, id := range g.ids {
		if _, err := l.Join(ctx, Member{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Apply(ctx, Command{Kind: CmdSetSynced, Queue: "q1", IDs: []string{"a", "b"}}); err != nil {
		t.Fatal(err)
	}
	want, err := l.Apply(ctx, Command{Kind: CmdHandover, IDs: []string{"b"}})
	if err != nil {
		t.Fatal(err)
	}
	if want.Epoch != 4 || want.Master != "b" {
		t.Fatalf("view before the restart: %+v", want)
	}
	for _, id := range g.ids {
		waitView(t, id, g.svc(id), want)
	}
	if err := g.svc("c").raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	for _, id := range g.ids {
		g.kill(id)
	}

	// c alone has no leader to learn the commit index from: the view it
	// has at once is its snapshot's.
	c := g.restart("c")
	if v := c.View(); !reflect.DeepEqual(v, want) {
		t.Fatalf("c restored %+v from its snapshot, want %+v", v, want)
	}
	g.restart("a")
	g.restart("b")
	for _, id := range g.ids {
		if !g.logs[id].Contains("not bootstrapping") {
			t.Fatalf("%s did not find its raft state", id)
		}
	}
	// The voters' views start empty (or at c's snapshot) and catch up once
	// a leader commits; IsLeader holds only for a leader that has caught up,
	// so a leader never decides on the stale view.
	l = nil
	waitFor(t, 10*time.Second, "a raft leader", func() bool {
		for _, id := range g.ids {
			s := g.svc(id)
			if !s.IsLeader() {
				continue
			}
			if v := s.View(); !reflect.DeepEqual(v, want) {
				t.Fatalf("leader %s has view %+v, want %+v", id, v, want)
			}
			l = s
		}
		return l != nil
	})
	for _, id := range g.ids {
		waitView(t, id, g.svc(id), want)
		g.checkVoters(id)
	}
	// The group goes on from the kept view.
	next, err := l.Apply(ctx, Command{Kind: CmdHandover, IDs: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	if next.Epoch != want.Epoch+1 || next.Master != "a" {
		t.Fatalf("view after the restart: %+v", next)
	}
}

// A data dir belongs to one voter; a second process on it fails fast.
func TestDataDirIsOneVoters(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := t.TempDir()
	ln := listen(t)
	a, err := Start(Config{ID: "a", RaftListener: ln, Auth: gm.AuthConfig{Secret: secret}, DataDir: dir,
		Bootstrap: true, Voters: []Voter{{ID: "a", RaftAddr: ln.Addr().String()}}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Start(Config{ID: "a", RaftListener: listen(t), Auth: gm.AuthConfig{Secret: secret}, DataDir: dir})
	if err == nil || !strings.Contains(err.Error(), "is locked") {
		t.Fatalf("a second voter on a data dir in use: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = Start(Config{ID: "b", RaftListener: listen(t), Auth: gm.AuthConfig{Secret: secret}, DataDir: dir})
	if err == nil || !strings.Contains(err.Error(), `belongs to voter "a", not "b"`) {
		t.Fatalf("voter b on a's data dir: %v", err)
	}
}
