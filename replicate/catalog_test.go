package replicate

import (
	"fmt"
	"slices"
	"testing"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

func TestCatalogQueues(t *testing.T) {
	m := &Master{cat: newCatalog()}
	m.sy.init(nil)
	declare := func(name string, passive, exclusive bool) []byte {
		return amqp.AppendMethod(nil, &amqp.QueueDeclare{Queue: name, Passive: passive, Exclusive: exclusive})
	}
	for _, d := range [][]byte{declare("b", false, false), declare("a", false, false), declare("p", true, false), declare("x", false, true), declare("a", false, false)} {
		m.cat.record("/", d)
	}
	m.cat.record("other", declare("z", false, false))
	if got := fmt.Sprint(m.Queues("/")); got != "[a b]" {
		t.Fatalf("catalog %s, want [a b] (no passive, no exclusive, no duplicates)", got)
	}
	if _, gone := m.cat.record("/", amqp.AppendMethod(nil, &amqp.QueueDelete{Queue: "a"})); gone != "a" {
		t.Fatalf("delete reported %q", gone)
	}
	if got := fmt.Sprint(m.Queues("/")); got != "[b]" {
		t.Fatalf("after delete: %s", got)
	}
	if got := fmt.Sprint(m.Queues("other")); got != "[z]" {
		t.Fatalf("vhost other: %s", got)
	}
}

// names renders replayed methods as "name:subject" for comparison.
func names(t *testing.T, ms [][]byte) []string {
	t.Helper()
	var out []string
	for _, b := range ms {
		dm, err := amqp.DecodeMethod(b)
		if err != nil {
			t.Fatal(err)
		}
		switch d := dm.(type) {
		case *amqp.ExchangeDeclare:
			out = append(out, "x:"+d.Exchange)
		case *amqp.QueueDeclare:
			out = append(out, "q:"+d.Queue)
		case *amqp.QueueBind:
			out = append(out, "qb:"+d.Exchange+">"+d.Queue+"/"+d.RoutingKey)
		case *amqp.ExchangeBind:
			out = append(out, "xb:"+d.Source+">"+d.Destination+"/"+d.RoutingKey)
		default:
			out = append(out, d.Name())
		}
	}
	return out
}

func TestCatalogReplay(t *testing.T) {
	c := newCatalog()
	rec := func(m amqp.Method) { c.record("/", amqp.AppendMethod(nil, m)) }
	rec(&amqp.QueueBind{Queue: "q1", Exchange: "ex1", RoutingKey: "k"}) // before its parts: still replayed after them
	rec(&amqp.ExchangeDeclare{Exchange: "ex1", Type: "direct", Durable: true, NoWait: true})
	rec(&amqp.ExchangeDeclare{Exchange: "ex2", Type: "fanout"})
	rec(&amqp.QueueDeclare{Queue: "q1", Durable: true})
	rec(&amqp.QueueDeclare{Queue: "q2"})
	rec(&amqp.ExchangeBind{Destination: "ex2", Source: "ex1", RoutingKey: "e"})
	rec(&amqp.QueueBind{Queue: "q2", Exchange: "ex2"})
	rec(&amqp.QueueBind{Queue: "q2", Exchange: "ex1", RoutingKey: "gone"})
	rec(&amqp.QueueUnbind{Queue: "q2", Exchange: "ex1", RoutingKey: "gone"})
	rec(&amqp.QueueBind{Queue: "q2", Exchange: "ex1", RoutingKey: "a", Arguments: amqp.Table{{Key: "x", Value: int32(1)}}})
	rec(&amqp.QueueBind{Queue: "q2", Exchange: "ex1", RoutingKey: "a", Arguments: amqp.Table{{Key: "x", Value: int32(2)}}})
	rec(&amqp.QueueUnbind{Queue: "q2", Exchange: "ex1", RoutingKey: "a", Arguments: amqp.Table{{Key: "x", Value: int32(1)}}})
	got := names(t, c.replay("/", nil))
	want := []string{"x:ex1", "x:ex2", "q:q1", "q:q2", "xb:ex1>ex2/e", "qb:ex1>q1/k", "qb:ex2>q2/", "qb:ex1>q2/a"}
	if !slices.Equal(got, want) {
		t.Fatalf("replay\n got %v\nwant %v", got, want)
	}
	// The exchange declare was recorded with no-wait cleared: a mirror
	// waits for its -ok.
	dm, _ := amqp.DecodeMethod(c.replay("/", nil)[0])
	if dm.(*amqp.ExchangeDeclare).NoWait {
		t.Fatal("replayed declare keeps no-wait")
	}
	if got := names(t, c.replay("/", func(q string) bool { return q == "q1" })); !slices.Equal(got, []string{"x:ex1", "x:ex2", "q:q1", "xb:ex1>ex2/e", "qb:ex1>q1/k"}) {
		t.Fatalf("replay of q1 only: %v", got)
	}
	rec(&amqp.ExchangeDelete{Exchange: "ex2"})
	rec(&amqp.QueueDelete{Queue: "q1"})
	if got := names(t, c.replay("/", nil)); !slices.Equal(got, []string{"x:ex1", "q:q2", "qb:ex1>q2/a"}) {
		t.Fatalf("after deletes: %v", got)
	}
	// Binding churn does not grow the order without bound.
	for i := range 1000 {
		k := fmt.Sprint(i)
		rec(&amqp.QueueBind{Queue: "q2", Exchange: "ex1", RoutingKey: k})
		rec(&amqp.QueueUnbind{Queue: "q2", Exchange: "ex1", RoutingKey: k})
	}
	if n := len(c.vhosts["/"].bOrder); n > 2*len(c.vhosts["/"].bindings)+65 {
		t.Fatalf("binding order holds %d keys for %d bindings", n, len(c.vhosts["/"].bindings))
	}
}
