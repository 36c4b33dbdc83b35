package replicate

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/mirrorproxy/mirrorproxy/gm"
	"github.com/mirrorproxy/mirrorproxy/proxy"
	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// ringMember is one gm node on loopback whose application may hold back
// "applied" (a mirror whose broker has not confirmed yet).
type ringMember struct {
	node *gm.Node
	mu   sync.Mutex
	ops  []Op
	hold bool
	held []gm.Op
}

func (r *ringMember) deliver(op gm.Op) {
	parsed, err := ParseOp(append([]byte(nil), op.Data...))
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		r.ops = append(r.ops, parsed)
	}
	if r.hold {
		r.held = append(r.held, op)
		return
	}
	r.node.Applied(op.Sender, op.Seq)
}

func (r *ringMember) release() {
	r.mu.Lock()
	held := r.held
	r.held, r.hold = nil, false
	r.mu.Unlock()
	for _, op := range held {
		r.node.Applied(op.Sender, op.Seq)
	}
}

func (r *ringMember) received() []Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Op(nil), r.ops...)
}

func startRing(t *testing.T, n int) []*ringMember {
	var addrs sync.Map
	members := make([]*ringMember, n)
	view := gm.View{Epoch: 1}
	for i := range members {
		id := fmt.Sprintf("m%d", i)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs.Store(id, ln.Addr().String())
		m := &ringMember{}
		node, err := gm.StartNode(gm.NodeConfig{
			ID: id, Listener: ln, Auth: gm.AuthConfig{Secret: []byte("a test secret of enough length")},
			Resolve: func(id string) string {
				a, _ := addrs.Load(id)
				s, _ := a.(string)
				return s
			},
			Ring:         gm.Config{Window: 64},
			Deliver:      m.deliver,
			TickInterval: 5 * time.Millisecond, HeartbeatInterval: 50 * time.Millisecond,
			Logger: zerolog.Nop(),
		})
		if err != nil {
			t.Fatal(err)
		}
		m.node = node
		members[i] = m
		view.Members = append(view.Members, gm.Member{ID: id, Inc: 1})
		t.Cleanup(func() { node.Close() })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, m := range members {
		m.node.InstallView(view)
	}
	for _, m := range members {
		if err := m.node.WaitEpoch(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	return members
}

// The master's ops reach every member in order, and a ticket is reported
// stable only once the slowest member applied it.
func TestMasterOverARealRing(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs after the ring closes
	ring := startRing(t, 3)
	slow := ring[2]
	slow.mu.Lock()
	slow.hold = true
	slow.mu.Unlock()

	m := NewMaster(MasterConfig{Ring: ring[0].node, Epoch: 7, Logger: zerolog.Nop()})
	defer m.Close()
	var mu sync.Mutex
	var stable proxy.Ticket
	cancel := m.Watch(func(t proxy.Ticket) { mu.Lock(); stable = t; mu.Unlock() })
	defer cancel()
	stableNow := func() proxy.Ticket { mu.Lock(); defer mu.Unlock(); return stable }

	id := m.NextID()
	if id>>idBits != 7 {
		t.Fatalf("id %x does not carry the epoch", id)
	}
	t1, err := m.Publish(proxy.Publish{Vhost: "/", ID: id, Exchange: []byte("ex"), RoutingKey: []byte("rk"), Header: []byte{0, 60}, Body: []byte("body")})
	if err != nil {
		t.Fatal(err)
	}
	t2, err := m.Settle("/", "q", []uint64{id}, false)
	if err != nil {
		t.Fatal(err)
	}
	t3, err := m.Topology("/", []byte{0, 50, 0, 10})
	if err != nil {
		t.Fatal(err)
	}
	if t1 >= t2 || t2 >= t3 {
		t.Fatalf("tickets %d %d %d are not in order", t1, t2, t3)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, r := range ring[1:] { // a sender is not delivered its own ops
		for len(r.received()) < 3 {
			if time.Now().After(deadline) {
				t.Fatal("ops did not reach every member")
			}
			time.Sleep(5 * time.Millisecond)
		}
		got := r.received()
		if got[0].Kind != OpPublish || got[0].ID != id || string(got[0].Body) != "body" || got[0].Exchange != "ex" ||
			got[1].Kind != OpAck || got[1].IDs[0] != id || got[2].Kind != OpTopology {
			t.Fatalf("a member received %+v", got)
		}
	}
	// Two of three applied: nothing is stable.
	if s := stableNow(); s != 0 {
		t.Fatalf("ticket %d reported stable while a member has not applied it", s)
	}
	slow.release()
	for stableNow() < t3 {
		if time.Now().After(deadline) {
			t.Fatalf("stable stayed at %d, want %d", stableNow(), t3)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A multiple-ack of more ids than one op holds goes as several ops.
func TestMasterSplitsLargeSettles(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	ring := startRing(t, 2)
	m := NewMaster(MasterConfig{Ring: ring[0].node, Epoch: 1, Logger: zerolog.Nop()})
	defer m.Close()
	ids := make([]uint64, MaxOpIDs+10)
	for i := range ids {
		ids[i] = uint64(i + 1)
	}
	if _, err := m.Settle("/", "q", ids, false); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(ring[1].received()) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the settle ops did not arrive")
		}
		time.Sleep(5 * time.Millisecond)
	}
	got := ring[1].received()
	if len(got[0].IDs) != MaxOpIDs || len(got[1].IDs) != 10 || got[1].IDs[9] != uint64(MaxOpIDs+10) {
		t.Fatalf("split into %d and %d ids", len(got[0].IDs), len(got[1].IDs))
	}
}

// A mirror taken out of a synced set holds confirms (HoldUnrecorded) until
// the view is known to reflect it (Recorded): an election in between
// would read the view and could elect the mirror that lacks them.
func TestConfirmsWaitForTheViewToRecordAnUnsyncedMirror(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	ring := startRing(t, 2)
	ps := &Policies{}
	def, err := ParseDefinitionJSON([]byte(`{"ha-mode":"all"}`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPolicy("/", "ha-all", `^ha\.`, ApplyToQueues, 0, def)
	if err != nil {
		t.Fatal(err)
	}
	if err := ps.Set(p); err != nil {
		t.Fatal(err)
	}
	m := NewMaster(MasterConfig{Ring: ring[0].node, Epoch: 1, Self: "m0", Policies: ps, HoldUnrecorded: true,
		Members: []Member{{Node: "m0", JoinEpoch: 1}, {Node: "m1", JoinEpoch: 1}}, Logger: zerolog.Nop()})
	defer m.Close()
	var mu sync.Mutex
	var stable proxy.Ticket
	defer m.Watch(func(t proxy.Ticket) { mu.Lock(); stable = t; mu.Unlock() })()
	stableNow := func() proxy.Ticket { mu.Lock(); defer mu.Unlock(); return stable }
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	t1, err := m.Topology("/", amqp.AppendMethod(nil, &amqp.QueueDeclare{Queue: "ha.q", Durable: true}))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Synced("/", "ha.q"); !slices.Equal(got, []string{"m1"}) {
		t.Fatalf("a new queue's synced mirrors: %v, want [m1]", got)
	}
	waitUntil("the declare confirmed (nothing to record yet)", func() bool { return stableNow() >= t1 })

	gen0 := m.Unrecorded()
	m.MarkUnsynced("m1", "/", "ha.q")
	gen := m.Unrecorded()
	if gen == gen0 {
		t.Fatal("taking m1 out of the synced set was not counted")
	}
	t2, err := m.Publish(proxy.Publish{Vhost: "/", ID: m.NextID(), Exchange: []byte(""), RoutingKey: []byte("ha.q"), Header: []byte{0, 60}, Body: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil("the publish stable on the ring and the master holding its confirm", func() bool {
		return ring[0].node.Stable() >= uint64(t2) && m.Holding()
	})
	if s := stableNow(); s >= t2 {
		t.Fatalf("confirm %d went out before the view recorded that m1 is no longer synced", s)
	}
	m.Recorded(gen0) // an older record does not cover it
	if s := stableNow(); s >= t2 || !m.Holding() {
		t.Fatalf("confirm %d went out on a record older than the removal", s)
	}
	m.Recorded(gen)
	waitUntil("the held confirm after the record", func() bool { return stableNow() >= t2 })
	if m.Holding() {
		t.Fatal("still holding after the record")
	}
}
