package group

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/mirrorproxy/mirrorproxy/gm"
	"github.com/mirrorproxy/mirrorproxy/proxy"
	"github.com/mirrorproxy/mirrorproxy/replicate"
	"github.com/mirrorproxy/mirrorproxy/testenv"
	// The docker backend, for MIRRORPROXY_TESTENV=docker.
	_ "github.com/mirrorproxy/mirrorproxy/testenv/docker"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// sidecars are three in-process sidecars in front of a testenv group.
type sidecars struct {
	groups  []*Group
	clients []string // client addresses
	served  []chan error
	dead    []bool // closed by kill
	once    sync.Once
}

// kill stops sidecar i at once (its sockets close, as when the process
// dies): the others notice by its silence.
func (s *sidecars) kill(t *testing.T, i int) {
	t.Helper()
	s.dead[i] = true
	if err := s.groups[i].Close(); err != nil {
		t.Errorf("closing sidecar %d: %v", i, err)
	}
	if err := <-s.served[i]; !errors.Is(err, proxy.ErrServerClosed) {
		t.Errorf("sidecar %d: Serve returned %v", i, err)
	}
}

// moveSessions turns on session moves for the sidecars a test starts
// (TestSessionMovesWithTheMaster).
var moveSessions bool

func startSidecars(t *testing.T, env *testenv.Group, policies *replicate.Policies) *sidecars {
	t.Helper()
	n := len(env.Nodes)
	var peers []Peer
	var cls, gls, rls []net.Listener
	for i := range n {
		cl, gl, rl := listen(t), listen(t), listen(t)
		cls, gls, rls = append(cls, cl), append(gls, gl), append(rls, rl)
		peers = append(peers, Peer{ID: fmt.Sprintf("node-%d", i), ClientAddr: cl.Addr().String(),
			GMAddr: gl.Addr().String(), RaftAddr: rl.Addr().String()})
	}
	log := zerolog.Nop()
	if os.Getenv("GROUP_TEST_LOG") != "" {
		log = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	}
	s := &sidecars{}
	for i, node := range env.Nodes {
		// Each node has its own policies, as separate processes do: the
		// group keeps them the same through the ring.
		own := &replicate.Policies{}
		if policies != nil {
			if err := own.Replace(policies.List("")); err != nil {
				t.Fatal(err)
			}
		}
		g, err := Start(Config{
			Self: peers[i].ID, Peers: peers, GMListener: gls[i], RaftListener: rls[i],
			Auth:      gm.AuthConfig{Secret: []byte("group test secret, long enough")},
			BrokerURL: node.URL, Policies: own, MoveSessions: moveSessions,
			Proxy:  proxy.Options{Upstream: node.AMQPAddr, Logger: log},
			Logger: log,
		})
		if err != nil {
			t.Fatal(err)
		}
		ch := make(chan error, 1)
		go func() { ch <- g.Serve(cls[i]) }()
		s.groups = append(s.groups, g)
		s.clients = append(s.clients, peers[i].ClientAddr)
		s.served = append(s.served, ch)
		s.dead = append(s.dead, false)
	}
	t.Cleanup(s.close(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, g := range s.groups {
		v, err := g.WaitMembers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if v.Master != peers[0].ID {
			t.Fatalf("master is %q, want the first peer %q", v.Master, peers[0].ID)
		}
	}
	return s
}

// close returns a function that closes every sidecar once (a test may
// close them early, e.g. to read the brokers' copies; cleanup then does
// nothing).
func (s *sidecars) close(t *testing.T) func() {
	return func() {
		s.once.Do(func() { s.closeAll(t) })
	}
}

func (s *sidecars) closeAll(t *testing.T) {
	{
		for i, g := range s.groups {
			if s.dead[i] {
				continue
			}
			if err := g.Close(); err != nil {
				t.Errorf("closing sidecar %d: %v", i, err)
			}
			if err := <-s.served[i]; !errors.Is(err, proxy.ErrServerClosed) {
				t.Errorf("sidecar %d: Serve returned %v", i, err)
			}
		}
	}
}

func dial(t *testing.T, url string) *amqp091.Connection {
	t.Helper()
	c, err := amqp091.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func channel(t *testing.T, c *amqp091.Connection) *amqp091.Channel {
	t.Helper()
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// exists reports whether queue exists on the broker at url (a passive
// declare; 404 means it does not).
func queueExists(t *testing.T, url, queue string) bool {
	t.Helper()
	c := dial(t, url)
	defer c.Close()
	ch := channel(t, c)
	_, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	var ae *amqp091.Error
	if errors.As(err, &ae) && ae.Code == amqp091.NotFound {
		return false
	}
	if err != nil {
		t.Fatalf("passive declare of %q: %v", queue, err)
	}
	return true
}

func publishConfirmed(t *testing.T, ch *amqp091.Channel, exchange, key string, bodies ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var dcs []*amqp091.DeferredConfirmation
	for _, b := range bodies {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, false, false,
			amqp091.Publishing{DeliveryMode: amqp091.Persistent, Body: []byte(b)})
		if err != nil {
			t.Fatal(err)
		}
		dcs = append(dcs, dc)
	}
	for i, dc := range dcs {
		ok, err := dc.WaitContext(ctx)
		if err != nil || !ok {
			t.Fatalf("publish %d: confirmed %v, %v", i, ok, err)
		}
	}
}

// policy builds a queue policy of vhost "/".
func policy(t *testing.T, name, pattern string, def map[string]any) replicate.Policy {
	t.Helper()
	d, err := replicate.ParseDefinition(def)
	if err != nil {
		t.Fatal(err)
	}
	p, err := replicate.NewPolicy("/", name, pattern, replicate.ApplyTo("queues"), 0, d)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// startGroup starts three brokers and their sidecars with the given
// policies, and checks after the test (once the sidecars closed) that it
// left no goroutine behind. Tests that start brokers skip with -short.
func startGroup(t *testing.T, ps ...replicate.Policy) (*testenv.Group, *sidecars) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts RabbitMQ brokers")
	}
	env := testenv.Start(t, testenv.Options{Nodes: 3})
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // after the sidecars close
	policies := &replicate.Policies{}
	for _, p := range ps {
		if err := policies.Set(p); err != nil {
			t.Fatal(err)
		}
	}
	return env, startSidecars(t, env, policies)
}

func TestGroupBroker(t *testing.T) {
	env, s := startGroup(t, policy(t, "ha-all", `^ha\.`, map[string]any{"ha-mode": "all"}))
	master := s.groups[0]
	if !master.IsMaster() || s.groups[1].IsMaster() {
		t.Fatalf("roles: node-0 master %v, node-1 master %v", master.IsMaster(), s.groups[1].IsMaster())
	}

	t.Run("HelloQueue", func(t *testing.T) { testHelloQueue(t, env, s) })
	t.Run("NotMirrored", func(t *testing.T) { testNotMirrored(t, env, s) })
	t.Run("ConfirmWaitsForMirror", func(t *testing.T) { testConfirmWaitsForMirror(t, env, s) })
	t.Run("ForwardedClient", func(t *testing.T) { testForwardedClient(t, env, s) })
	for i, g := range s.groups {
		if n := g.ApplyFailures(); n != 0 {
			t.Errorf("node-%d: %d ops failed to apply", i, n)
		}
	}
	// Last: it releases node-1's mirror, which then applies nothing more.
	t.Run("MirrorOrder", func(t *testing.T) { testMirrorOrder(t, env, s) })
}

// A mirror's copies are the master's messages in the master's order: after
// Release the mirror broker's queue holds them, stamped with their ids.
func testMirrorOrder(t *testing.T, env *testenv.Group, s *sidecars) {
	conn := dial(t, "amqp://guest:guest@"+s.clients[0]+"/")
	ch := channel(t, conn)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	// hello-queue holds "while blocked" from ConfirmWaitsForMirror.
	want := []string{"while blocked"}
	for i := range 20 {
		want = append(want, fmt.Sprintf("order %02d", i))
	}
	publishConfirmed(t, ch, "hello-exch", "hala", want[1:]...)
	mir := s.groups[1].Mirror()
	waitFor(t, "node-1 holding every copy", 30*time.Second, func() bool { return mir.Held("/", "hello-queue") == len(want) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := mir.Release(ctx); err != nil {
		t.Fatal(err)
	}
	mc := channel(t, dial(t, env.Nodes[1].URL))
	var ids []int64
	for i, body := range want {
		var d amqp091.Delivery
		waitFor(t, fmt.Sprintf("copy %d ready on node-1", i), 30*time.Second, func() bool {
			var ok bool
			var err error
			d, ok, err = mc.Get("hello-queue", true)
			if err != nil {
				t.Fatal(err)
			}
			return ok
		})
		if string(d.Body) != body {
			t.Fatalf("copy %d on node-1: %q, want %q", i, d.Body, body)
		}
		// The copy carries the master's stamp (the timestamp type marks a
		// headers table the core added), ids increasing in publish order.
		var id int64
		switch v := d.Headers["x-mirror-id"].(type) {
		case int64:
			id = v
		case time.Time:
			id = v.Unix()
		default:
			t.Fatalf("copy %d: x-mirror-id %T %v", i, v, v)
		}
		if len(ids) > 0 && id <= ids[len(ids)-1] {
			t.Fatalf("copy %d: id %d not after %d", i, id, ids[len(ids)-1])
		}
		ids = append(ids, id)
	}
	if _, ok, err := mc.Get("hello-queue", true); err != nil || ok {
		t.Fatalf("node-1 holds more than the master's messages (%v, %v)", ok, err)
	}
}

// The seed's example: hello-exch, hello-queue with x-ha-policy all, publish
// with confirms through the master; every mirror has the topology and holds
// the messages; acks through the master release them on the mirrors.
func testHelloQueue(t *testing.T, env *testenv.Group, s *sidecars) {
	conn := dial(t, "amqp://guest:guest@"+s.clients[0]+"/")
	ch := channel(t, conn)
	if err := ch.ExchangeDeclare("hello-exch", "direct", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("hello-queue", true, false, false, false, amqp091.Table{"x-ha-policy": "all"}); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind("hello-queue", "hala", "hello-exch", false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	bodies := []string{"hello 0", "hello 1", "hello 2", "hello 3", "hello 4"}
	publishConfirmed(t, ch, "hello-exch", "hala", bodies...)
	// The master's catalog (what ctl list_queues shows) has the queue.
	if m := s.groups[0].Master(); m == nil || !slices.Contains(m.Queues("/"), "hello-queue") {
		t.Fatalf("the master's queue catalog lacks hello-queue")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := 1; i < 3; i++ {
		node, g := env.Nodes[i], s.groups[i]
		out, err := node.Ctl(ctx, "list_exchanges", "name", "type", "durable")
		if err != nil || !strings.Contains(out, "hello-exch\tdirect\ttrue") {
			t.Fatalf("node-%d: hello-exch not declared as durable direct: %v\n%s", i, err, out)
		}
		out, err = node.Ctl(ctx, "list_bindings", "source_name", "destination_name", "routing_key")
		if err != nil || !strings.Contains(out, "hello-exch\thello-queue\thala") {
			t.Fatalf("node-%d: binding hello-exch -> hello-queue (hala) missing: %v\n%s", i, err, out)
		}
		if !queueExists(t, node.URL, "hello-queue") {
			t.Fatalf("node-%d: hello-queue missing", i)
		}
		// The confirms came after every mirror applied the publishes.
		if n := g.Mirror().Held("/", "hello-queue"); n != len(bodies) {
			waitFor(t, fmt.Sprintf("node-%d holding %d copies (holds %d)", i, len(bodies), n), 30*time.Second,
				func() bool { return g.Mirror().Held("/", "hello-queue") == len(bodies) })
		}
	}

	// Consume with manual acks through the master.
	cch := channel(t, conn)
	dels, err := cch.Consume("hello-queue", "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range bodies {
		select {
		case d := <-dels:
			if string(d.Body) != want {
				t.Fatalf("delivery %d: %q, want %q", i, d.Body, want)
			}
			if _, ok := d.Headers["x-mirror-id"]; ok {
				t.Fatalf("delivery %d carries x-mirror-id", i)
			}
			if err := d.Ack(false); err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatalf("delivery %d did not arrive", i)
		}
	}
	for i := 1; i < 3; i++ {
		g := s.groups[i]
		waitFor(t, fmt.Sprintf("node-%d holding nothing after acks", i), 30*time.Second,
			func() bool { return g.Mirror().Held("/", "hello-queue") == 0 })
		out, err := env.Nodes[i].Ctl(ctx, "list_queues", "name", "messages")
		if err != nil || !strings.Contains(out, "hello-queue\t0") {
			t.Fatalf("node-%d: hello-queue should be empty: %v\n%s", i, err, out)
		}
	}
	if err := cch.Close(); err != nil {
		t.Fatal(err)
	}
}

// A queue no policy mirrors is on the master only; one a policy mirrors
// is on every mirror.
func testNotMirrored(t *testing.T, env *testenv.Group, s *sidecars) {
	conn := dial(t, "amqp://guest:guest@"+s.clients[0]+"/")
	ch := channel(t, conn)
	for _, q := range []string{"plain-queue", "ha.by-policy"} {
		if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	// Confirmed: every op before it, the declares included, is applied.
	publishConfirmed(t, ch, "", "plain-queue", "only on the master")
	publishConfirmed(t, ch, "", "ha.by-policy", "everywhere")
	if !queueExists(t, env.Nodes[0].URL, "plain-queue") {
		t.Fatal("plain-queue missing on the master's broker")
	}
	for i := 1; i < 3; i++ {
		if queueExists(t, env.Nodes[i].URL, "plain-queue") {
			t.Errorf("node-%d: plain-queue is mirrored without a policy", i)
		}
		if !queueExists(t, env.Nodes[i].URL, "ha.by-policy") {
			t.Errorf("node-%d: ha.by-policy is not mirrored", i)
		}
		g := s.groups[i]
		waitFor(t, fmt.Sprintf("node-%d holding ha.by-policy's copy", i), 30*time.Second,
			func() bool { return g.Mirror().Held("/", "ha.by-policy") == 1 })
	}
}

// With one mirror's broker blocked by a memory alarm, a confirm does not
// arrive; after the alarm clears, it does.
func testConfirmWaitsForMirror(t *testing.T, env *testenv.Group, s *sidecars) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	blocked := env.Nodes[2]
	conn := dial(t, "amqp://guest:guest@"+s.clients[0]+"/")
	ch := channel(t, conn)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	if _, err := blocked.Ctl(ctx, "set_vm_memory_high_watermark", "0"); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if _, err := blocked.Ctl(context.Background(), "set_vm_memory_high_watermark", "0.4"); err != nil {
				t.Error(err)
			}
		}
	}
	defer restore()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "hello-exch", "hala", false, false,
		amqp091.Publishing{DeliveryMode: amqp091.Persistent, Body: []byte("while blocked")})
	if err != nil {
		t.Fatal(err)
	}
	// The mirror's publishing connection is blocked once it tried to publish
	// the copy; the master's broker and the other mirror are not.
	waitFor(t, "node-2's mirror connection blocked", 30*time.Second, func() bool {
		out, err := blocked.Ctl(ctx, "list_connections", "client_properties", "state")
		return err == nil && strings.Contains(out, "mirrorproxy mirror") && strings.Contains(out, "\tblocked")
	})
	waitFor(t, "node-1 holding the copy", 30*time.Second,
		func() bool { return s.groups[1].Mirror().Held("/", "hello-queue") == 1 })
	select {
	case <-dc.Done():
		t.Fatalf("confirm arrived (ack %v) while a mirror's broker blocks publishes", dc.Acked())
	default:
	}
	restore()
	ok, err := dc.WaitContext(ctx)
	if err != nil || !ok {
		t.Fatalf("confirm after the alarm cleared: %v, %v", ok, err)
	}
	waitFor(t, "node-2 holding the copy", 30*time.Second,
		func() bool { return s.groups[2].Mirror().Held("/", "hello-queue") == 1 })
}

// A client of a mirror's sidecar is carried over the peer link to the master's core: what it
// publishes lands in the master's broker and is mirrored.
func testForwardedClient(t *testing.T, env *testenv.Group, s *sidecars) {
	conn := dial(t, "amqp://guest:guest@"+s.clients[1]+"/")
	ch := channel(t, conn)
	if _, err := ch.QueueDeclare("ha.forwarded", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	publishConfirmed(t, ch, "", "ha.forwarded", "via a mirror's sidecar")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := env.Nodes[0].Ctl(ctx, "list_queues", "name", "messages")
	if err != nil || !strings.Contains(out, "ha.forwarded\t1") {
		t.Fatalf("master's broker should hold ha.forwarded's message: %v\n%s", err, out)
	}
	for i := 1; i < 3; i++ {
		g := s.groups[i]
		waitFor(t, fmt.Sprintf("node-%d holding ha.forwarded's copy", i), 30*time.Second,
			func() bool { return g.Mirror().Held("/", "ha.forwarded") == 1 })
	}
}
