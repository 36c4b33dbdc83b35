package gm

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

var testSecret = []byte("0123456789abcdef-test-secret")

// testApp records deliveries and reports each op applied at once.
type testApp struct {
	mu   sync.Mutex
	got  map[Member][]uint64
	node *Node
}

func (a *testApp) deliver(op Op) {
	a.mu.Lock()
	a.got[op.Sender] = append(a.got[op.Sender], op.Seq)
	a.mu.Unlock()
	a.node.Applied(op.Sender, op.Seq)
}

func (a *testApp) seqs(s Member) []uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]uint64(nil), a.got[s]...)
}

type cluster struct {
	t     *testing.T
	addrs sync.Map // id -> addr
	nodes map[string]*Node
	apps  map[string]*testApp
}

func newCluster(t *testing.T, ids []string, secret []byte, logs *bytes.Buffer) *cluster {
	c := &cluster{t: t, nodes: map[string]*Node{}, apps: map[string]*testApp{}}
	for _, id := range ids {
		c.start(id, secret, logs)
	}
	return c
}

func (c *cluster) start(id string, secret []byte, logs *bytes.Buffer) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.t.Fatal(err)
	}
	c.addrs.Store(id, ln.Addr().String())
	app := &testApp{got: map[Member][]uint64{}}
	log := zerolog.Nop()
	if logs != nil {
		log = zerolog.New(&lockedWriter{w: logs})
	}
	n, err := StartNode(NodeConfig{
		ID: id, Listener: ln, Auth: AuthConfig{Secret: secret},
		Resolve: func(id string) string {
			a, _ := c.addrs.Load(id)
			s, _ := a.(string)
			return s
		},
		Ring:              Config{Window: 256},
		Deliver:           app.deliver,
		TickInterval:      5 * time.Millisecond,
		HeartbeatInterval: 50 * time.Millisecond,
		Logger:            log,
	})
	if err != nil {
		c.t.Fatal(err)
	}
	app.node = n
	c.nodes[id] = n
	c.apps[id] = app
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

func (c *cluster) install(v View) {
	for _, m := range v.Members {
		if n := c.nodes[m.ID]; n != nil {
			n.InstallView(v)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, m := range v.Members {
		if n := c.nodes[m.ID]; n != nil {
			if err := n.WaitEpoch(ctx, v.Epoch); err != nil {
				c.t.Fatalf("%s did not install view %d: %v", m.ID, v.Epoch, err)
			}
		}
	}
}

func (c *cluster) closeAll() {
	for _, n := range c.nodes {
		n.Close()
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func contiguous(s []uint64, from, to uint64) bool {
	if uint64(len(s)) != to-from+1 {
		return false
	}
	for i, q := range s {
		if q != from+uint64(i) {
			return false
		}
	}
	return true
}

func TestNodesKillOneTrafficContinues(t *testing.T) {
	defer goleak.VerifyNone(t)
	for _, size := range []int{3, 5} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			var ids []string
			var v View
			v.Epoch = 1
			for i := range size {
				id := fmt.Sprintf("m%d", i)
				ids = append(ids, id)
				v.Members = append(v.Members, Member{ID: id, Inc: 1})
			}
			c := newCluster(t, ids, testSecret, nil)
			defer c.closeAll()
			c.install(v)
			sender := c.nodes["m0"]
			self := v.Members[0]
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			const first = 500
			for i := range first {
				if _, err := sender.Propose(ctx, fmt.Appendf(nil, "op %d", i)); err != nil {
					t.Fatal(err)
				}
			}
			if err := sender.WaitStable(ctx, first); err != nil {
				t.Fatal(err)
			}
			// Kill the middle member: its listener and every connection go.
			victim := ids[size/2]
			c.nodes[victim].Close()
			delete(c.nodes, victim)
			// Ops sent while the dead member is still in the view do not
			// become stable.
			seq, err := sender.Propose(ctx, []byte("during"))
			if err != nil {
				t.Fatal(err)
			}
			short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
			if err := sender.WaitStable(short, seq); err == nil {
				t.Fatalf("op %d stable while a member of the view is dead", seq)
			}
			cancelShort()
			v2 := View{Epoch: 2}
			for _, m := range v.Members {
				if m.ID != victim {
					v2.Members = append(v2.Members, m)
				}
			}
			c.install(v2)
			const more = 500
			var last uint64
			for i := range more {
				if last, err = sender.Propose(ctx, fmt.Appendf(nil, "after %d", i)); err != nil {
					t.Fatal(err)
				}
			}
			if err := sender.WaitStable(ctx, last); err != nil {
				t.Fatal(err)
			}
			for _, id := range ids[1:] {
				if id == victim {
					continue
				}
				if s := c.apps[id].seqs(self); !contiguous(s, 1, last) {
					t.Fatalf("%s delivered %d ops, not 1..%d in order", id, len(s), last)
				}
			}
		})
	}
}

func TestNodeRefusesWrongSecret(t *testing.T) {
	defer goleak.VerifyNone(t)
	var logs bytes.Buffer
	lw := &lockedWriter{w: &logs}
	c := newCluster(t, []string{"a", "b"}, testSecret, nil)
	defer c.closeAll()
	// A node with the wrong secret; a's logs are what we check.
	c.nodes["a"].Close()
	delete(c.nodes, "a")
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	c.addrs.Store("a", ln.Addr().String())
	a, err := StartNode(NodeConfig{
		ID: "a", Listener: ln, Auth: AuthConfig{Secret: testSecret},
		Resolve: func(id string) string { v, _ := c.addrs.Load(id); s, _ := v.(string); return s },
		Logger:  zerolog.New(lw),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	bad := newCluster(t, []string{"evil"}, []byte("not-the-right-secret!"), nil)
	defer bad.closeAll()
	bad.addrs.Store("a", ln.Addr().String())
	v := View{Epoch: 1, Members: []Member{{"evil", 1}, {"a", 1}}}
	bad.install(v)
	a.InstallView(v)
	eventually(t, 5*time.Second, "refusal logged", func() bool {
		return bytes.Contains([]byte(lw.String()), []byte("does not know the shared secret"))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	seq, err := bad.nodes["evil"].Propose(ctx, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.nodes["evil"].WaitStable(ctx, seq); err == nil {
		t.Fatal("an op from a peer with the wrong secret became stable")
	}
	if !a.LastHeard("evil").IsZero() {
		t.Fatal("a accepted a frame from an unauthenticated peer")
	}
}

func TestNodeDropsGarbagePeer(t *testing.T) {
	defer goleak.VerifyNone(t)
	var logs bytes.Buffer
	lw := &lockedWriter{w: &logs}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	a, err := StartNode(NodeConfig{
		ID: "a", Listener: ln, Auth: AuthConfig{Secret: testSecret},
		Resolve: func(string) string { return "" }, Logger: zerolog.New(lw),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(conn)
	for {
		if _, err := r.ReadByte(); err != nil {
			break // the node hung up
		}
	}
	eventually(t, 5*time.Second, "refusal logged", func() bool {
		return bytes.Contains([]byte(lw.String()), []byte("gm peer refused"))
	})
}
