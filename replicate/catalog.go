package replicate

import (
	"slices"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// catalog is the topology declared through a master, per vhost: what a
// mirror that joins later (or gains a queue by a policy change) must have
// declared before it can hold copies. It keeps each entity's method as the
// broker accepted it, so replaying it declares the same thing.
//
// Not safe for concurrent use; Master guards it.
type catalog struct {
	vhosts map[string]*vhostCatalog
}

type vhostCatalog struct {
	exchanges map[string][]byte // name → exchange.declare payload
	exOrder   []string
	queues    map[string]*QueueEntry
	qOrder    []string
	bindings  map[string]binding // key (bindingKey) → binding
	bOrder    []string
}

// QueueEntry is one queue in a master's catalog.
type QueueEntry struct {
	Vhost, Name string
	// Declare is the queue.declare payload as the broker accepted it
	// (server-made name filled in).
	Declare    []byte
	Durable    bool
	AutoDelete bool
	Arguments  amqp.Table
}

type binding struct {
	method []byte // queue.bind or exchange.bind payload, no-wait cleared
	queue  bool   // destination is a queue
	dest   string
	source string
}

func newCatalog() *catalog { return &catalog{vhosts: map[string]*vhostCatalog{}} }

func (c *catalog) vhost(name string) *vhostCatalog {
	v := c.vhosts[name]
	if v == nil {
		v = &vhostCatalog{exchanges: map[string][]byte{}, queues: map[string]*QueueEntry{}, bindings: map[string]binding{}}
		c.vhosts[name] = v
	}
	return v
}

// record applies one topology method the broker accepted. It returns the
// queue it declared for the first time (nil otherwise), or the name of the
// queue it deleted.
func (c *catalog) record(vhost string, method []byte) (declared *QueueEntry, deleted string) {
	dm, err := amqp.DecodeMethod(method)
	if err != nil {
		return nil, ""
	}
	v := c.vhost(vhost)
	switch d := dm.(type) {
	case *amqp.ExchangeDeclare:
		if d.Passive || d.Exchange == "" {
			return nil, ""
		}
		if _, ok := v.exchanges[d.Exchange]; !ok {
			v.exOrder = append(v.exOrder, d.Exchange)
		}
		d.NoWait = false
		v.exchanges[d.Exchange] = amqp.AppendMethod(nil, d)
	case *amqp.ExchangeDelete:
		if _, ok := v.exchanges[d.Exchange]; ok {
			delete(v.exchanges, d.Exchange)
			v.exOrder = slices.DeleteFunc(v.exOrder, func(n string) bool { return n == d.Exchange })
		}
		v.unbindAll(func(b binding) bool { return b.source == d.Exchange || !b.queue && b.dest == d.Exchange })
	case *amqp.QueueDeclare:
		if d.Passive || d.Exclusive || d.Queue == "" {
			return nil, ""
		}
		_, known := v.queues[d.Queue]
		d.NoWait = false
		e := &QueueEntry{Vhost: vhost, Name: d.Queue, Declare: amqp.AppendMethod(nil, d), Durable: d.Durable, AutoDelete: d.AutoDelete, Arguments: d.Arguments}
		if known {
			// A redeclare the broker accepted has the same properties.
			return nil, ""
		}
		v.queues[d.Queue] = e
		v.qOrder = append(v.qOrder, d.Queue)
		return e, ""
	case *amqp.QueueDelete:
		v.forgetQueue(d.Queue)
		return nil, d.Queue
	case *amqp.QueueBind:
		v.bind(true, d.Queue, d.Exchange, d.RoutingKey, d.Arguments)
	case *amqp.QueueUnbind:
		v.unbind(bindingKey(true, d.Queue, d.Exchange, d.RoutingKey, d.Arguments))
	case *amqp.ExchangeBind:
		v.bind(false, d.Destination, d.Source, d.RoutingKey, d.Arguments)
	case *amqp.ExchangeUnbind:
		v.unbind(bindingKey(false, d.Destination, d.Source, d.RoutingKey, d.Arguments))
	}
	return nil, ""
}

func (v *vhostCatalog) forgetQueue(name string) {
	if _, ok := v.queues[name]; !ok {
		return
	}
	delete(v.queues, name)
	v.qOrder = slices.DeleteFunc(v.qOrder, func(n string) bool { return n == name })
	v.unbindAll(func(b binding) bool { return b.queue && b.dest == name })
}

func (v *vhostCatalog) bind(queue bool, dest, source, key string, args amqp.Table) {
	k := bindingKey(queue, dest, source, key, args)
	if _, ok := v.bindings[k]; ok {
		return
	}
	var m []byte
	if queue {
		m = amqp.AppendMethod(nil, &amqp.QueueBind{Queue: dest, Exchange: source, RoutingKey: key, Arguments: args})
	} else {
		m = amqp.AppendMethod(nil, &amqp.ExchangeBind{Destination: dest, Source: source, RoutingKey: key, Arguments: args})
	}
	v.bindings[k] = binding{method: m, queue: queue, dest: dest, source: source}
	v.bOrder = append(v.bOrder, k)
}

func (v *vhostCatalog) unbindAll(match func(binding) bool) {
	for k, b := range v.bindings {
		if match(b) {
			delete(v.bindings, k)
		}
	}
	v.maybeCompact()
}

func (v *vhostCatalog) unbind(k string) {
	delete(v.bindings, k)
	v.maybeCompact()
}

// maybeCompact bounds bOrder when bindings come and go.
func (v *vhostCatalog) maybeCompact() {
	if len(v.bOrder) > 2*len(v.bindings)+64 {
		v.compact()
	}
}

// compact drops removed bindings from bOrder, and repeats of one that was
// removed and made again (it keeps the first place: replay order is only
// exchanges before bindings, so any order of bindings is valid).
func (v *vhostCatalog) compact() {
	seen := make(map[string]bool, len(v.bindings))
	live := v.bOrder[:0]
	for _, k := range v.bOrder {
		if _, ok := v.bindings[k]; ok && !seen[k] {
			seen[k] = true
			live = append(live, k)
		}
	}
	clear(v.bOrder[len(live):])
	v.bOrder = live
}

// bindingKey identifies a binding as RabbitMQ does: destination, source,
// routing key and arguments.
func bindingKey(queue bool, dest, source, key string, args amqp.Table) string {
	kind := "e"
	if queue {
		kind = "q"
	}
	b := []byte(kind)
	for _, s := range []string{dest, source, key} {
		b = append(append(b, byte(len(s))), s...)
	}
	return string(amqp.AppendTable(b, args))
}

// replay returns the methods that declare vhost's topology, in an order a
// broker accepts: exchanges, queues (only those keep(queue) selects; nil
// keeps all), then exchange bindings and the selected queues' bindings.
func (c *catalog) replay(vhost string, keep func(queue string) bool) [][]byte {
	v := c.vhosts[vhost]
	if v == nil {
		return nil
	}
	var out [][]byte
	for _, n := range v.exOrder {
		out = append(out, v.exchanges[n])
	}
	for _, n := range v.qOrder {
		if keep == nil || keep(n) {
			out = append(out, v.queues[n].Declare)
		}
	}
	v.compact()
	for _, queues := range []bool{false, true} {
		for _, k := range v.bOrder {
			b := v.bindings[k]
			if b.queue != queues || b.queue && keep != nil && !keep(b.dest) {
				continue
			}
			out = append(out, b.method)
		}
	}
	return out
}

// queue returns the entry of a queue, or nil.
func (c *catalog) queue(vhost, name string) *QueueEntry {
	if v := c.vhosts[vhost]; v != nil {
		return v.queues[name]
	}
	return nil
}

// all returns every queue entry, in vhost then declaration order.
func (c *catalog) all() []*QueueEntry {
	names := make([]string, 0, len(c.vhosts))
	for n := range c.vhosts {
		names = append(names, n)
	}
	slices.Sort(names)
	var out []*QueueEntry
	for _, n := range names {
		v := c.vhosts[n]
		for _, q := range v.qOrder {
			out = append(out, v.queues[q])
		}
	}
	return out
}

// TopologyQueue returns the queue a topology method is about (declare,
// bind, unbind, purge, delete), or "" for an exchange method.
func TopologyQueue(method []byte) string {
	dm, err := amqp.DecodeMethod(method)
	if err != nil {
		return ""
	}
	switch d := dm.(type) {
	case *amqp.QueueDeclare:
		return d.Queue
	case *amqp.QueueBind:
		return d.Queue
	case *amqp.QueueUnbind:
		return d.Queue
	case *amqp.QueuePurge:
		return d.Queue
	case *amqp.QueueDelete:
		return d.Queue
	}
	return ""
}
