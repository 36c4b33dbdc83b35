package proxy

// Replicator is what the core on the master calls when replication is on
// (docs/REPLICATION.md). replicate/ implements it; proxy never imports
// replicate/. A nil Options.Replicator makes the proxy a plain transparent
// proxy: nothing is stamped, stripped or withheld.
//
// Concurrency: every method may be called from many sessions' pumps at once.
// Slices passed in are valid only during the call.
type Replicator interface {
	// NextID returns a fresh message id for the x-mirror-id stamp.
	NextID() uint64
	// Publish hands one complete publish to the ring and returns its
	// ticket. header is the stamped content-header payload; body is the
	// body in one piece.
	Publish(p Publish) (Ticket, error)
	// Settle tells the mirrors that the master's copies of ids in queue
	// were acked (drop false) or rejected without requeue (drop true).
	Settle(vhost, queue string, ids []uint64, drop bool) (Ticket, error)
	// Topology hands a topology method the broker accepted (its payload,
	// with server-made names filled in).
	Topology(vhost string, method []byte) (Ticket, error)
	// Watch calls fn with the highest stable ticket each time it grows,
	// until cancel is called. fn must not block for long.
	Watch(fn func(stable Ticket)) (cancel func())
}

// Redeliverer is what a Replicator may also be: a master promoted after a
// failover cannot know which of the old master's messages were delivered
// to clients, so deliveries of those (ids from an older master) are
// flagged redelivered.
type Redeliverer interface {
	MayHaveBeenDelivered(id uint64) bool
}

// Deduper is what a Replicator may also be: it remembers the front keys
// (Publish.Key) of the publishes this node stored, as master or as a
// mirror applying the master's stream, so that a publish a moved session
// sends again is dropped, and confirmed, when the message is stored
// already (docs/FAILOVER.md, "Publishes re-sent after a move").
type Deduper interface {
	Stored(key uint64) bool
}

// Ticket orders a replicator's ops; a ticket is stable when every member of
// the view has durably applied its op and every op before it.
type Ticket uint64

// Publish is one message as the client published it on the master.
type Publish struct {
	Vhost      string
	ID         uint64
	Exchange   []byte
	RoutingKey []byte
	Mandatory  bool
	Header     []byte // content-header payload, stamped
	Body       []byte
	// Key is the publish's front key: who sent it (the front's session,
	// channel and confirm sequence number), the same when a moved session
	// sends it again; 0 when the publisher did not ask for confirms.
	Key uint64
}
