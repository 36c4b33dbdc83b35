package replicate

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// OpKind is what an op does; see docs/REPLICATION.md for who makes each.
type OpKind uint8

// The op kinds. Their numbers are part of the encoding: never reuse one.
const (
	// OpPublish re-publishes a message (id, exchange, routing key,
	// mandatory, content header payload, body).
	OpPublish OpKind = 1
	// OpAck acks the held copies of ids in a queue.
	OpAck OpKind = 2
	// OpDrop rejects the held copies of ids in a queue without requeue, so
	// that the mirror's broker dead-letters them as the master's did.
	OpDrop OpKind = 3
	// OpTopology runs a method (its frame payload) on the mirror's broker.
	OpTopology OpKind = 4
	// OpQueueGone deletes a queue that disappeared with its owner.
	OpQueueGone OpKind = 5
	// OpSyncStart starts a sync of a queue on the mirrors named in Nodes
	// (docs/REPLICATION.md, "Sync"). ID numbers the sync run.
	OpSyncStart OpKind = 6
	// OpSyncCopy carries one message of the master's queue to the mirrors
	// that are syncing it (content header payload and body).
	OpSyncCopy OpKind = 7
	// OpSyncEnd ends the sync run ID of a queue; Cancelled says it stopped
	// before copying everything (the mirrors stay unsynced).
	OpSyncEnd OpKind = 8
	// OpPolicy sets (Data: the policy as JSON) or clears (no Data) the
	// policy Name of Vhost; with Name empty, Data is a JSON array that
	// replaces every policy of every vhost (a new master's set).
	OpPolicy OpKind = 9
	// OpStatus is sent by a mirror (Nodes: itself) when it stopped being a
	// faithful copy of Queue ("" for the whole vhost), so the master drops
	// it from the synced sets. With Vhost "" too, the mirror starts from
	// empty (Master.Fresh): the master declares its catalog again.
	OpStatus OpKind = 10
	// OpPurge purges a queue (queue.purge the master's broker accepted)
	// but for the ids in IDs: messages clients held delivered and unacked
	// then, which the purge left on the master.
	OpPurge OpKind = 11
)

func (k OpKind) String() string {
	switch k {
	case OpPublish:
		return "publish"
	case OpAck:
		return "ack"
	case OpDrop:
		return "drop"
	case OpTopology:
		return "topology"
	case OpQueueGone:
		return "queue-gone"
	case OpSyncStart:
		return "sync-start"
	case OpSyncCopy:
		return "sync-copy"
	case OpSyncEnd:
		return "sync-end"
	case OpPolicy:
		return "policy"
	case OpStatus:
		return "status"
	case OpPurge:
		return "purge"
	}
	return fmt.Sprintf("op-kind(%d)", uint8(k))
}

// Op is one replicated change. Which fields are used depends on Kind:
//
//	Publish    Vhost ID Key Exchange RoutingKey Mandatory Header Body
//	Ack, Drop  Vhost Queue IDs
//	Purge      Vhost Queue IDs (kept)
//	Topology   Vhost Method
//	QueueGone  Vhost Queue
//	SyncStart  Vhost Queue ID Nodes
//	SyncCopy   Vhost Queue Header Body
//	SyncEnd    Vhost Queue ID Cancelled
//	Policy     Vhost Name Data
//	Status     Vhost Queue Nodes
//
// ParseOp sets only the fields of its kind; AppendOp ignores the others.
type Op struct {
	Kind  OpKind
	Vhost string
	// ID is the message's x-mirror-id (epoch in the top 24 bits).
	ID uint64
	// Key is a publish's front key (proxy.Publish.Key), 0 for none.
	Key        uint64
	Exchange   string
	RoutingKey string
	Mandatory  bool
	// Header is the content header frame's payload as the master broker
	// received it (x-mirror-id stamped); Body is the message body.
	Header []byte
	Body   []byte
	Queue  string
	IDs    []uint64
	// Method is a method frame's payload (class id, method id, arguments).
	Method []byte
	// Nodes are member IDs (sync targets; a status op's sender).
	Nodes []string
	// Cancelled marks a sync run that stopped before it finished.
	Cancelled bool
	// Name is a policy's name; Data its JSON definition.
	Name string
	Data []byte
}

// The flags of a Publish op.
const (
	publishMandatory = 1 << 0
	publishKeyed     = 1 << 1
)

// OpFormat is the format octet that starts every encoded op. A decoder
// refuses any other, so a format change is a new number here and a
// rolling-upgrade plan, never a silent reinterpretation.
const OpFormat = 1

// ErrMalformedOp is wrapped by every ParseOp error; the message says what
// was wrong.
var ErrMalformedOp = errors.New("replicate: malformed op")

// MaxOpIDs bounds the ids of one Ack or Drop op (a client's multiple ack
// spanning more is split by the core).
const MaxOpIDs = 1 << 16

// Encoding, after the format octet and the kind octet:
//
//	all kinds   vhost        u8 length + octets
//	Publish     id           u64
//	            flags        u8 (bit 0: mandatory; bit 1: a front key
//	                         follows; other bits zero)
//	            front key    u64, with flags bit 1
//	            exchange     u8 length + octets
//	            routing key  u8 length + octets
//	            header       u32 length + octets
//	            body         u32 length + octets
//	Ack, Drop,  queue        u8 length + octets
//	Purge       count        u32, then count × u64 ids
//	Topology    method       u32 length + octets
//	QueueGone   queue        u8 length + octets
//	SyncStart   queue        u8 length + octets
//	            run id       u64
//	            nodes        u8 count, then count × (u8 length + octets)
//	SyncCopy    queue        u8 length + octets
//	            header       u32 length + octets
//	            body         u32 length + octets
//	SyncEnd     queue        u8 length + octets
//	            run id       u64
//	            flags        u8 (bit 0: cancelled; other bits zero)
//	Policy      name         u8 length + octets
//	            data         u32 length + octets
//	Status      queue        u8 length + octets
//	            nodes        u8 count, then count × (u8 length + octets)
//
// Numbers are big-endian. Nothing may follow the last field. Short strings
// are at most 255 octets, as in AMQP.

// AppendOp appends the encoding of op to dst and returns the extended
// buffer. It does not allocate when dst has room. Strings longer than 255
// octets (AMQP short strings cannot be) and more than MaxOpIDs ids make it
// panic: ops are built from frames the master's broker accepted, so that is
// a bug in the caller; use ValidateOp on anything else.
func AppendOp(dst []byte, op *Op) []byte {
	if err := ValidateOp(op); err != nil {
		panic(err)
	}
	dst = append(dst, OpFormat, byte(op.Kind))
	dst = appendShort(dst, op.Vhost)
	switch op.Kind {
	case OpPublish:
		dst = binary.BigEndian.AppendUint64(dst, op.ID)
		flags := byte(0)
		if op.Mandatory {
			flags |= publishMandatory
		}
		if op.Key != 0 {
			flags |= publishKeyed
		}
		dst = append(dst, flags)
		if op.Key != 0 {
			dst = binary.BigEndian.AppendUint64(dst, op.Key)
		}
		dst = appendShort(dst, op.Exchange)
		dst = appendShort(dst, op.RoutingKey)
		dst = appendLong(dst, op.Header)
		dst = appendLong(dst, op.Body)
	case OpAck, OpDrop, OpPurge:
		dst = appendShort(dst, op.Queue)
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(op.IDs)))
		for _, id := range op.IDs {
			dst = binary.BigEndian.AppendUint64(dst, id)
		}
	case OpTopology:
		dst = appendLong(dst, op.Method)
	case OpQueueGone:
		dst = appendShort(dst, op.Queue)
	case OpSyncStart:
		dst = appendShort(dst, op.Queue)
		dst = binary.BigEndian.AppendUint64(dst, op.ID)
		dst = appendNodes(dst, op.Nodes)
	case OpSyncCopy:
		dst = appendShort(dst, op.Queue)
		dst = appendLong(dst, op.Header)
		dst = appendLong(dst, op.Body)
	case OpSyncEnd:
		dst = appendShort(dst, op.Queue)
		dst = binary.BigEndian.AppendUint64(dst, op.ID)
		dst = appendFlag(dst, op.Cancelled)
	case OpPolicy:
		dst = appendShort(dst, op.Name)
		dst = appendLong(dst, op.Data)
	case OpStatus:
		dst = appendShort(dst, op.Queue)
		dst = appendNodes(dst, op.Nodes)
	}
	return dst
}

// appendFlag appends a flags octet with bit 0 set when f is.
func appendFlag(dst []byte, f bool) []byte {
	if f {
		return append(dst, 1)
	}
	return append(dst, 0)
}

func appendNodes(dst []byte, nodes []string) []byte {
	dst = append(dst, byte(len(nodes)))
	for _, n := range nodes {
		dst = appendShort(dst, n)
	}
	return dst
}

// ValidateOp reports what AppendOp would panic on.
func ValidateOp(op *Op) error {
	switch op.Kind {
	case OpPublish, OpAck, OpDrop, OpTopology, OpQueueGone, OpSyncStart, OpSyncCopy, OpSyncEnd, OpPolicy, OpStatus, OpPurge:
	default:
		return fmt.Errorf("replicate: cannot encode op of unknown kind %d", uint8(op.Kind))
	}
	for _, f := range [...]struct{ name, s string }{{"vhost", op.Vhost}, {"exchange", op.Exchange}, {"routing key", op.RoutingKey}, {"queue", op.Queue}, {"name", op.Name}} {
		if len(f.s) > 255 {
			return fmt.Errorf("replicate: cannot encode %s op: %s of %d octets (at most 255)", op.Kind, f.name, len(f.s))
		}
	}
	if len(op.Nodes) > 255 {
		return fmt.Errorf("replicate: cannot encode %s op: %d nodes (at most 255)", op.Kind, len(op.Nodes))
	}
	for _, n := range op.Nodes {
		if len(n) > 255 {
			return fmt.Errorf("replicate: cannot encode %s op: node name of %d octets (at most 255)", op.Kind, len(n))
		}
	}
	if len(op.IDs) > MaxOpIDs {
		return fmt.Errorf("replicate: cannot encode %s op: %d ids (at most %d)", op.Kind, len(op.IDs), MaxOpIDs)
	}
	if uint64(len(op.Header)) > 0xffffffff || uint64(len(op.Body)) > 0xffffffff || uint64(len(op.Method)) > 0xffffffff || uint64(len(op.Data)) > 0xffffffff {
		return fmt.Errorf("replicate: cannot encode %s op: a field longer than 4 GiB", op.Kind)
	}
	return nil
}

func appendShort(dst []byte, s string) []byte {
	return append(append(dst, byte(len(s))), s...)
}

func appendLong(dst, b []byte) []byte {
	return append(binary.BigEndian.AppendUint32(dst, uint32(len(b))), b...)
}

// OpKindOf returns the kind of an encoded op without parsing the rest.
func OpKindOf(b []byte) (OpKind, error) {
	if len(b) < 2 {
		return 0, fmt.Errorf("%w: %d octets, too short for format and kind", ErrMalformedOp, len(b))
	}
	if b[0] != OpFormat {
		return 0, fmt.Errorf("%w: format %d, this build reads format %d", ErrMalformedOp, b[0], OpFormat)
	}
	return OpKind(b[1]), nil
}

// ParseOp decodes an op. Header, Body and Method alias b; the strings and
// IDs are copies. Every length is checked against what is left of b before
// anything is allocated. Errors wrap ErrMalformedOp.
func ParseOp(b []byte) (Op, error) {
	var op Op
	kind, err := OpKindOf(b)
	if err != nil {
		return op, err
	}
	op.Kind = kind
	r := opReader{b: b[2:], kind: kind}
	op.Vhost = r.short("vhost")
	switch kind {
	case OpPublish:
		op.ID = r.u64("id")
		flags := r.u8("flags")
		if flags&^(publishMandatory|publishKeyed) != 0 {
			r.fail("flags 0x%02x: only bits 0 (mandatory) and 1 (front key) are defined", flags)
		}
		op.Mandatory = flags&publishMandatory != 0
		if flags&publishKeyed != 0 {
			op.Key = r.u64("front key")
		}
		op.Exchange = r.short("exchange")
		op.RoutingKey = r.short("routing key")
		op.Header = r.long("header")
		op.Body = r.long("body")
	case OpAck, OpDrop, OpPurge:
		op.Queue = r.short("queue")
		n := r.u32("id count")
		if r.err == nil {
			switch {
			case n > MaxOpIDs:
				r.fail("%d ids, at most %d", n, MaxOpIDs)
			case uint64(n)*8 > uint64(len(r.b)):
				r.fail("%d ids need %d octets, %d left", n, uint64(n)*8, len(r.b))
			case n > 0:
				op.IDs = make([]uint64, n)
				for i := range op.IDs {
					op.IDs[i] = binary.BigEndian.Uint64(r.b[8*i:])
				}
				r.b = r.b[8*n:]
			}
		}
	case OpTopology:
		op.Method = r.long("method")
	case OpQueueGone:
		op.Queue = r.short("queue")
	case OpSyncStart:
		op.Queue = r.short("queue")
		op.ID = r.u64("run id")
		op.Nodes = r.nodes()
	case OpSyncCopy:
		op.Queue = r.short("queue")
		op.Header = r.long("header")
		op.Body = r.long("body")
	case OpSyncEnd:
		op.Queue = r.short("queue")
		op.ID = r.u64("run id")
		op.Cancelled = r.flag("cancelled")
	case OpPolicy:
		op.Name = r.short("name")
		op.Data = r.long("data")
	case OpStatus:
		op.Queue = r.short("queue")
		op.Nodes = r.nodes()
	default:
		return Op{}, fmt.Errorf("%w: unknown kind %d", ErrMalformedOp, uint8(kind))
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("%d octets after the last field", len(r.b))
	}
	if r.err != nil {
		return Op{}, r.err
	}
	return op, nil
}

// opReader reads fields in order; the first error sticks and names the field.
type opReader struct {
	b    []byte
	kind OpKind
	err  error
}

func (r *opReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s op: %s", ErrMalformedOp, r.kind, fmt.Sprintf(format, args...))
	}
}

func (r *opReader) need(field string, n uint64) bool { return r.needOf(field, "", n) }

// needOf is need for a field named field+suffix, concatenated only on failure.
func (r *opReader) needOf(field, suffix string, n uint64) bool {
	if r.err != nil {
		return false
	}
	if uint64(len(r.b)) < n {
		r.fail("%s%s needs %d octets, %d left", field, suffix, n, len(r.b))
		return false
	}
	return true
}

// flag reads a flags octet whose only defined bit 0 is the named flag.
func (r *opReader) flag(name string) bool {
	switch flags := r.u8("flags"); flags {
	case 0:
		return false
	case 1:
		return true
	default:
		r.fail("flags 0x%02x: only bit 0 (%s) is defined", flags, name)
		return false
	}
}

func (r *opReader) u8(field string) byte {
	if !r.need(field, 1) {
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *opReader) u32(field string) uint32 {
	if !r.need(field, 4) {
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *opReader) u64(field string) uint64 {
	if !r.need(field, 8) {
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *opReader) short(field string) string {
	if !r.needOf(field, " length", 1) {
		return ""
	}
	n := r.b[0]
	r.b = r.b[1:]
	if !r.need(field, uint64(n)) {
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

// nodes reads a count octet and that many short strings; a count is
// checked against what is left (each name needs at least its length octet).
func (r *opReader) nodes() []string {
	n := r.u8("node count")
	if r.err != nil || n == 0 {
		return nil
	}
	if int(n) > len(r.b) {
		r.fail("%d nodes need at least %d octets, %d left", n, n, len(r.b))
		return nil
	}
	out := make([]string, 0, n)
	for range n {
		out = append(out, r.short("node"))
	}
	return out
}

func (r *opReader) long(field string) []byte {
	if !r.needOf(field, " length", 4) {
		return nil
	}
	n := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	if !r.need(field, uint64(n)) {
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}
