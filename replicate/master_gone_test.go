package replicate

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
	"github.com/mirrorproxy/mirrorproxy/testenv"
)

// recRing is a Ring that records the proposed ops; every op is stable at
// once.
type recRing struct {
	mu    sync.Mutex
	ops   []Op
	moved chan struct{} // closed and replaced when a proposal arrives
}

func newRecRing() *recRing { return &recRing{moved: make(chan struct{})} }

func (r *recRing) Propose(_ context.Context, data []byte) (uint64, error) {
	op, err := ParseOp(slices.Clone(data))
	if err != nil {
		return 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, op)
	close(r.moved)
	r.moved = make(chan struct{})
	return uint64(len(r.ops)), nil
}

func (r *recRing) Stable() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return uint64(len(r.ops))
}

func (r *recRing) WaitStable(ctx context.Context, seq uint64) error {
	for {
		r.mu.Lock()
		n, moved := uint64(len(r.ops)), r.moved
		r.mu.Unlock()
		if n >= seq {
			return nil
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// gone returns the queues of the QueueGone ops proposed so far.
func (r *recRing) gone() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, op := range r.ops {
		if op.Kind == OpQueueGone {
			out = append(out, op.Vhost+"/"+op.Queue)
		}
	}
	return out
}

func watcherOf(t *testing.T, m *Master) *goneWatcher {
	t.Helper()
	if m.gone == nil {
		t.Fatal("the master has no queue-gone watcher")
	}
	return m.gone
}

// waitRounds waits until n more rounds of the watcher finished: with
// n = 2, one of them started after the call.
func waitRounds(t *testing.T, w *goneWatcher, n uint64) {
	t.Helper()
	want := w.rounds.Load() + n
	waitFor(t, "the watcher's rounds", 30*time.Second, func() bool { return w.rounds.Load() >= want })
}

// goneBroker is a test's client of the master's broker (amqp091-go).
type goneBroker struct {
	t    *testing.T
	conn *amqp091.Connection
	ch   *amqp091.Channel
}

func dialGoneBroker(t *testing.T, url string) *goneBroker {
	t.Helper()
	c, err := amqp091.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return &goneBroker{t: t, conn: c, ch: ch}
}

// exists asks with a passive declare (a 404 closes the channel: a new
// one is opened).
func (b *goneBroker) exists(q string) bool {
	b.t.Helper()
	_, err := b.ch.QueueDeclarePassive(q, false, true, false, false, nil)
	if err == nil {
		return true
	}
	if b.ch, err = b.conn.Channel(); err != nil {
		b.t.Fatal(err)
	}
	return false
}

// declare declares a queue on the broker and, as the core does once the
// broker answered, through the master.
func (b *goneBroker) declare(m *Master, q string, durable, autoDelete bool) {
	b.t.Helper()
	if _, err := b.ch.QueueDeclare(q, durable, autoDelete, false, false, nil); err != nil {
		b.t.Fatal(err)
	}
	if _, err := m.Topology("/", amqp.AppendMethod(nil, &amqp.QueueDeclare{Queue: q, Durable: durable, AutoDelete: autoDelete})); err != nil {
		b.t.Fatal(err)
	}
}

func (b *goneBroker) consume(q string) {
	b.t.Helper()
	if _, err := b.ch.Consume(q, "c-"+q, false, false, false, false, nil); err != nil {
		b.t.Fatal(err)
	}
}

func (b *goneBroker) cancel(q string) {
	b.t.Helper()
	if err := b.ch.Cancel("c-"+q, false); err != nil {
		b.t.Fatal(err)
	}
}

func newGoneMaster(t *testing.T, url string, interval time.Duration) (*Master, *recRing) {
	t.Helper()
	ring := newRecRing()
	m := NewMaster(MasterConfig{Ring: ring, Epoch: 1, Self: "m0", BrokerURL: url, GoneInterval: interval, Logger: testLogger(t)})
	t.Cleanup(m.Close)
	return m, ring
}

// TestMasterQueueGone runs the queue-gone watcher against a real broker.
func TestMasterQueueGone(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a RabbitMQ broker")
	}
	env := testenv.Start(t, testenv.Options{Nodes: 1})
	url := env.Nodes[0].URL
	t.Run("Periodic", func(t *testing.T) { testQueueGonePeriodic(t, url) })
	t.Run("OnDemand", func(t *testing.T) { testQueueGoneOnDemand(t, url) })
	t.Run("BrokerRefuses", func(t *testing.T) { testQueueGoneBrokerRefuses(t, url) })
	t.Run("NoBroker", testQueueGoneNoBroker)
}

// A vhost the broker refuses (530: no such vhost) is retried without
// reporting its queues gone, and does not hold up the other vhosts.
func testQueueGoneBrokerRefuses(t *testing.T, url string) {
	checkLeaks(t)
	m, ring := newGoneMaster(t, url, 20*time.Millisecond)
	w := watcherOf(t, m)
	if _, err := m.Topology("no-such-vhost", amqp.AppendMethod(nil, &amqp.QueueDeclare{Queue: "refused", AutoDelete: true})); err != nil {
		t.Fatal(err)
	}
	b := dialGoneBroker(t, url)
	b.declare(m, "refuses.gone", false, true)
	b.consume("refuses.gone")
	waitRounds(t, w, 2)
	b.cancel("refuses.gone")
	waitFor(t, "refuses.gone reported gone", 30*time.Second, func() bool { return len(ring.gone()) > 0 })
	waitRounds(t, w, 2)
	if g := ring.gone(); !slices.Equal(g, []string{"//refuses.gone"}) {
		t.Fatalf("reported gone: %v", g)
	}
	if _, ok := m.Queue("no-such-vhost", "refused"); !ok {
		t.Fatal("a queue of a vhost the broker refused was forgotten")
	}
	if n := w.conns.Load(); n != 0 {
		t.Fatalf("%d connections open, want none", n)
	}
}

// An auto-delete queue whose last consumer left is reported and forgotten;
// one that still has a consumer, and a plain queue deleted behind the
// master's back, are not. With no auto-delete queue left the watcher holds
// no connection.
func testQueueGonePeriodic(t *testing.T, url string) {
	checkLeaks(t)
	m, ring := newGoneMaster(t, url, 20*time.Millisecond)
	w := watcherOf(t, m)
	b := dialGoneBroker(t, url)
	b.declare(m, "gone.auto", false, true)
	b.declare(m, "gone.kept", false, true)
	b.declare(m, "gone.plain", true, false)
	b.consume("gone.auto")
	b.consume("gone.kept")
	waitRounds(t, w, 2)
	if g := ring.gone(); len(g) != 0 {
		t.Fatalf("reported gone while every queue exists: %v", g)
	}
	if w.conns.Load() != 1 {
		t.Fatalf("%d connections for one vhost", w.conns.Load())
	}

	if _, err := b.ch.QueueDelete("gone.plain", false, false, false); err != nil {
		t.Fatal(err)
	}
	b.cancel("gone.auto")
	waitFor(t, "gone.auto reported gone", 30*time.Second, func() bool { return slices.Contains(ring.gone(), "//gone.auto") })
	if q := m.Queues("/"); !slices.Equal(q, []string{"gone.kept", "gone.plain"}) {
		t.Fatalf("catalog after gone.auto went: %v", q)
	}
	if _, ok := m.Queue("/", "gone.auto"); ok {
		t.Fatal("gone.auto is still in the catalog")
	}
	waitRounds(t, w, 2)
	if g := ring.gone(); !slices.Equal(g, []string{"//gone.auto"}) {
		t.Fatalf("reported gone: %v, want only gone.auto", g)
	}

	b.cancel("gone.kept")
	waitFor(t, "gone.kept reported gone", 30*time.Second, func() bool { return slices.Contains(ring.gone(), "//gone.kept") })
	waitRounds(t, w, 2)
	if g := ring.gone(); !slices.Equal(g, []string{"//gone.auto", "//gone.kept"}) {
		t.Fatalf("reported gone: %v", g)
	}
	if n := w.conns.Load(); n != 0 {
		t.Fatalf("%d connections open with no auto-delete queue left", n)
	}
	if q := m.Queues("/"); !slices.Equal(q, []string{"gone.plain"}) {
		t.Fatalf("catalog at the end: %v", q)
	}
}

// With the periodic check off, CheckQueues checks at once; a queue that
// went and was declared again before the check is not reported.
func testQueueGoneOnDemand(t *testing.T, url string) {
	checkLeaks(t)
	m, ring := newGoneMaster(t, url, -1)
	w := watcherOf(t, m)
	b := dialGoneBroker(t, url)
	b.declare(m, "ondemand.again", false, true)
	b.declare(m, "ondemand.gone", false, true)
	b.consume("ondemand.again")
	b.consume("ondemand.gone")
	b.cancel("ondemand.again")
	b.cancel("ondemand.gone")
	// The broker deletes them; one is declared again (its Topology call
	// would find the catalog entry and change nothing).
	b2 := dialGoneBroker(t, url)
	waitFor(t, "the broker deleting ondemand.again", 30*time.Second, func() bool { return !b2.exists("ondemand.again") })
	if _, err := b2.ch.QueueDeclare("ondemand.again", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if r := w.rounds.Load(); r != 0 {
		t.Fatalf("%d rounds ran with the periodic check off", r)
	}
	m.CheckQueues()
	waitFor(t, "ondemand.gone reported gone", 30*time.Second, func() bool { return len(ring.gone()) > 0 })
	waitFor(t, "the round to finish", 30*time.Second, func() bool { return w.rounds.Load() >= 1 })
	if g := ring.gone(); !slices.Equal(g, []string{"//ondemand.gone"}) {
		t.Fatalf("reported gone: %v", g)
	}
	if q := m.Queues("/"); !slices.Equal(q, []string{"ondemand.again"}) {
		t.Fatalf("catalog: %v", q)
	}
	if r := w.rounds.Load(); r != 1 {
		t.Fatalf("%d rounds after one CheckQueues", r)
	}
}

// Without a broker URL there is no watcher and CheckQueues does nothing.
func testQueueGoneNoBroker(t *testing.T) {
	checkLeaks(t)
	m, _ := newGoneMaster(t, "", 0)
	if m.gone != nil {
		t.Fatal("a watcher runs without a broker URL")
	}
	m.CheckQueues()
}
