package gm

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Member names one incarnation of a ring member. ID is the node's stable
// name; Inc is the epoch of the view that admitted this incarnation (its
// join epoch). A node that leaves and comes back is a different Member: its
// sequence numbers, delivered counts and stability facts start afresh.
type Member struct {
	ID  string
	Inc uint64
}

// String formats m as id@inc.
func (m Member) String() string { return fmt.Sprintf("%s@%d", m.ID, m.Inc) }

// View is the ring as the view service committed it: Members in ring order
// (each member's successor is the next one, the last one's is the first).
type View struct {
	Epoch   uint64
	Members []Member
}

// Contains reports whether m (ID and incarnation) is in the view.
func (v View) Contains(m Member) bool { return v.index(m) >= 0 }

func (v View) index(m Member) int {
	for i, x := range v.Members {
		if x == m {
			return i
		}
	}
	return -1
}

// Op is one multicast operation. Sender and Seq name it: Seq counts from 1
// per sender incarnation without gaps. Epoch is the sender's view epoch when
// it was proposed. Data is opaque to gm.
type Op struct {
	Sender Member
	Seq    uint64
	Epoch  uint64
	Data   []byte
}

// StreamSeq is a sequence number within one sender's stream.
type StreamSeq struct {
	Stream Member
	Seq    uint64
}

// Fact says that Holder has durably applied Stream's ops up to Applied.
// Facts only ever grow, so merging them from any message is safe.
type Fact struct {
	Holder  Member
	Stream  Member
	Applied uint64
}

// MsgType is the kind of a Message.
type MsgType uint8

const (
	// MsgData goes from a member to its successor: ops, the link's base
	// sequence per stream, and the stability facts the sender knows.
	MsgData MsgType = 1
	// MsgAck goes from a member back to its predecessor: what it has
	// delivered per stream, and the stability facts it knows.
	MsgAck MsgType = 2
)

// Message is one gm protocol message. Every message carries the view epoch of
// its sender; a receiver on another epoch does not act on its ops or acks.
type Message struct {
	Type      MsgType
	Epoch     uint64
	From      Member
	To        Member
	Starts    []StreamSeq // MsgData: first seq the link will carry per stream
	Delivered []StreamSeq // MsgAck: highest contiguous seq delivered per stream
	Facts     []Fact
	Ops       []Op // MsgData only
}

// Codec limits. A message breaking one is rejected with ErrMalformed.
const (
	MaxIDLen = 255
)

// ErrMalformed is returned for bytes that do not decode as a Message.
var ErrMalformed = errors.New("gm: malformed message")

// AppendMessage appends the binary encoding of m to b.
//
//	type u8 | epoch uv | from | to | starts | delivered | facts | ops
//	member  = idlen uv | id | inc uv
//	list    = count uv | items
//	stream  = member | seq uv
//	fact    = member(holder) | member(stream) | applied uv
//	op      = member(sender) | seq uv | epoch uv | len uv | data
func AppendMessage(b []byte, m *Message) []byte {
	b = append(b, byte(m.Type))
	b = binary.AppendUvarint(b, m.Epoch)
	b = appendMember(b, m.From)
	b = appendMember(b, m.To)
	b = appendStreams(b, m.Starts)
	b = appendStreams(b, m.Delivered)
	b = binary.AppendUvarint(b, uint64(len(m.Facts)))
	for _, f := range m.Facts {
		b = appendMember(b, f.Holder)
		b = appendMember(b, f.Stream)
		b = binary.AppendUvarint(b, f.Applied)
	}
	b = binary.AppendUvarint(b, uint64(len(m.Ops)))
	for i := range m.Ops {
		op := &m.Ops[i]
		b = appendMember(b, op.Sender)
		b = binary.AppendUvarint(b, op.Seq)
		b = binary.AppendUvarint(b, op.Epoch)
		b = binary.AppendUvarint(b, uint64(len(op.Data)))
		b = append(b, op.Data...)
	}
	return b
}

func appendMember(b []byte, m Member) []byte {
	b = binary.AppendUvarint(b, uint64(len(m.ID)))
	b = append(b, m.ID...)
	return binary.AppendUvarint(b, m.Inc)
}

func appendStreams(b []byte, s []StreamSeq) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	for _, x := range s {
		b = appendMember(b, x.Stream)
		b = binary.AppendUvarint(b, x.Seq)
	}
	return b
}

// ParseMessage decodes one message. Op data aliases b: the caller must not
// reuse b while the message (or any op taken from it) is in use.
func ParseMessage(b []byte) (Message, error) {
	d := decoder{b: b}
	var m Message
	m.Type = MsgType(d.byte())
	if m.Type != MsgData && m.Type != MsgAck {
		return Message{}, fmt.Errorf("%w: unknown type %d", ErrMalformed, m.Type)
	}
	m.Epoch = d.uvarint()
	m.From = d.member()
	m.To = d.member()
	m.Starts = d.streams()
	m.Delivered = d.streams()
	if n := d.count(); n > 0 {
		m.Facts = make([]Fact, n)
		for i := range m.Facts {
			m.Facts[i] = Fact{Holder: d.member(), Stream: d.member(), Applied: d.uvarint()}
		}
	}
	if n := d.count(); n > 0 {
		m.Ops = make([]Op, n)
		for i := range m.Ops {
			op := &m.Ops[i]
			op.Sender = d.member()
			op.Seq = d.uvarint()
			op.Epoch = d.uvarint()
			op.Data = d.bytes()
		}
	}
	if d.err != nil {
		return Message{}, d.err
	}
	if len(d.b) != 0 {
		return Message{}, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(d.b))
	}
	return m, nil
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrMalformed, what)
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail("short type")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a list length; every item takes at least one byte, so a count
// beyond the remaining bytes is rejected before anything is allocated.
func (d *decoder) count() int {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail("list longer than message")
		return 0
	}
	return int(n)
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail("data longer than message")
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) member() Member {
	n := d.uvarint()
	if n > MaxIDLen || n > uint64(len(d.b)) {
		d.fail("bad member id length")
		return Member{}
	}
	id := string(d.b[:n])
	d.b = d.b[n:]
	return Member{ID: id, Inc: d.uvarint()}
}

func (d *decoder) streams() []StreamSeq {
	n := d.count()
	if n == 0 {
		return nil
	}
	s := make([]StreamSeq, n)
	for i := range s {
		s[i] = StreamSeq{Stream: d.member(), Seq: d.uvarint()}
	}
	return s
}
