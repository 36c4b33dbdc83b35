package proxy

import (
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// sessionState is what a front keeps of one client session so that it can be
// replayed on another broker: credentials, vhost, tune values, channels with
// their qos, confirm/tx mode and consumers, the delivery-tag and
// publish-sequence maps, and the unconfirmed publishes. It is a pure state
// machine: fromClient and fromUpstream are fed every frame that passes, in
// order, by the session's two pumps, and say whether to forward it.
//
// Concurrency: fromClient and fromUpstream are called from different
// goroutines; every method takes mu. Lock order: sessionState.mu before
// out.mu; ringMu is taken last and nothing is taken while it is held.
type sessionState struct {
	mu sync.Mutex
	// ringMu guards the channels slice and the channels' delivery rings
	// for Outstanding, which must not take mu (the Replicator it serves
	// is called under mu). Writers hold mu too; ringMu is a leaf lock.
	ringMu sync.Mutex

	// Handshake, set once before the pumps start.
	mechanism        string
	response         []byte
	locale           string
	clientProperties amqp.Table
	caps             clientCaps
	vhost            string
	client           tuneValues // what the client agreed in tune-ok
	upstream         tuneValues // what the proxy agreed with the broker

	channels []*channelState // by channel number; nil when closed
	open     int             // channels open
	// staleCloseOks counts, by channel number, the close-oks the broker
	// still owes for a channel both sides closed at once, where the
	// client's close-ok came first: the client is done with that channel
	// (and may open the number again), the broker's answer to its
	// channel.close is still on its way.
	staleCloseOks map[uint16]int
	closing       bool // connection.close seen from either side
	// Replication (nil repl: a plain proxy). stable is the highest ticket
	// the Replicator reported stable; toClient receives frames the core
	// makes up (confirms, held commit-oks), queued under mu so they keep
	// their order. clientOut/upOut, when replace is set, is the frame a
	// pump sends instead of the one it read (written and read by that
	// pump's goroutine only).
	repl       Replicator
	redeliver  func(id uint64) bool // the Replicator's Redeliverer, if it is one
	stable     Ticket
	toClient   frameSink
	scratch    []byte
	clientOut  []byte
	clientRepl bool
	upOut      []byte
	upRepl     bool
	upCopy     bool // upOut is not in the reader's buffer: copy it

	// Front keys (docs/FAILOVER.md, "Publishes re-sent after a move"):
	// with stampFront, the session stamps each confirm-mode publish with
	// a key of its own (random) and keeps the stamped frames for a replay; frontOut is the stamped
	// header frame. served marks a leg another front opened here: its
	// publishes carry the front's stamp, and dedup (the Replicator's
	// Deduper) drops those stored already. flushClient asks the client
	// pump to flush confirms it made up.
	stampFront  bool
	served      bool
	frontOut    []byte
	dedup       Deduper
	deduped     *atomic.Int64 // the server's count of publishes dropped
	flushClient bool

	maxPending  int // bound on unconfirmed publish bytes per session
	pendingSize int // bytes held in unconfirmed publishes
	// withheld is the confirms held back from the client until their ops
	// are stable (the pubLogs' withheld, summed; read by Server.Stats).
	withheld atomic.Int64
}

type tuneValues struct {
	channelMax uint16
	frameMax   uint32
	heartbeat  uint16
}

// clientCaps are the capabilities a client announced in start-ok.
type clientCaps struct {
	consumerCancelNotify bool
	connectionBlocked    bool
	publisherConfirms    bool
	basicNack            bool
	exchangeExchange     bool
	authFailureClose     bool
}

// channelState is one open channel.
type channelState struct {
	id uint16
	// Closing, per side (the two may cross): clientClosed is the client's
	// channel.close, unanswered by the broker's close-ok; brokerClosed the
	// broker's, unanswered by the client's. The channel is forgotten once
	// every close is answered (or, when the client answered the broker's
	// first, at that answer: see sessionState.staleCloseOks).
	clientClosed bool
	brokerClosed bool
	// dropping: a method with content was dropped on a closing channel
	// (the broker would ignore it); its content frames go with it.
	dropping bool
	// gone: the broker side does not know this channel (a move replayed
	// only open channels): the client's close-ok is answered here.
	gone      bool
	flowOff   bool
	confirm   bool   // confirm.select sent
	nextSeq   uint64 // next publish sequence number in confirm mode (from 1)
	tx        bool   // tx.select sent
	txDirty   bool   // publishes or acks since the last commit/rollback
	qosCount  uint16
	qosSize   uint32
	qosGlobal bool

	consumers map[string]*consumer
	// consumes waiting for consume-ok, in order (the tag may be server-made).
	consumeQ []*consumer

	// Delivery tags. The client sees tagBase + the broker's tag; tagBase
	// moves past lastTag when the session moves to another broker, so tags
	// keep increasing and tags at or below tagBase belong to the old broker.
	tagBase uint64
	lastTag uint64

	// pending is the synchronous method in flight (sent, not answered),
	// sent again after a move; seqs maps the publish sequence numbers of
	// the broker the session moved to back to the client's (nil before
	// any move).
	pending []byte
	seqs    *seqMap

	// in tracks content frames from the client, out those from the broker.
	in, out content

	unconfirmed pubLog

	r replChannel // the master core's replication state (with a Replicator)
}

// seqMap maps a moved channel's publish sequence numbers: the new broker
// numbers from 1 the replayed publishes (the client's replayed, in
// order), then the new ones (the client's from base on).
type seqMap struct {
	replayed []uint64
	base     uint64
}

// client returns the client's sequence number of the broker's seq.
func (m *seqMap) client(seq uint64) uint64 {
	if m == nil {
		return seq
	}
	if k := uint64(len(m.replayed)); seq <= k {
		if seq == 0 {
			return 0
		}
		return m.replayed[seq-1]
	} else {
		return m.base + seq - k - 1
	}
}

// frameSink takes frames the core makes up; *out is one.
type frameSink interface {
	build(fn func([]byte) []byte)
}

// consumer is one basic.consume, kept to re-attach it elsewhere.
type consumer struct {
	tag       string
	queue     string
	noLocal   bool
	noAck     bool
	exclusive bool
	args      amqp.Table
	// cancelOnFailover is x-cancel-on-ha-failover=true.
	cancelOnFailover bool
}

// content is where a channel is in a content-bearing method: none, or waiting
// for a header of classID, or for remaining body octets.
type content struct {
	state     uint8
	classID   uint16
	remaining uint64
}

const (
	contentNone = iota
	contentHeader
	contentBody
)

func newSessionState(maxPending int) *sessionState {
	return &sessionState{maxPending: maxPending, channels: make([]*channelState, 0, 8)}
}

func (s *sessionState) channel(id uint16) *channelState {
	if int(id) < len(s.channels) {
		return s.channels[id]
	}
	return nil
}

// connErr is a connection-level error to close the connection with.
func connErr(code uint16, format string, args ...any) *amqp.FrameError {
	return &amqp.FrameError{Code: code, Reason: fmt.Sprintf(format, args...)}
}

// step advances c for one frame and reports an error when the frame does not
// fit the content sequence, with RabbitMQ's reply code and wording.
func (c *content) step(f amqp.Frame) error {
	switch c.state {
	case contentNone:
		if f.Type != amqp.FrameMethod {
			return connErr(amqp.UnexpectedFrame, "UNEXPECTED_FRAME - expected method frame, got non method frame instead")
		}
	case contentHeader:
		if f.Type != amqp.FrameHeader {
			return connErr(amqp.UnexpectedFrame, "UNEXPECTED_FRAME - expected content header for class %d, got non content header frame instead", c.classID)
		}
		class, size, err := amqp.PeekContentHeader(f.Payload)
		if err != nil {
			return err
		}
		if class != c.classID {
			return connErr(amqp.UnexpectedFrame, "UNEXPECTED_FRAME - expected content header for class %d, got one for class %d instead", c.classID, class)
		}
		if size == 0 {
			c.state = contentNone
		} else {
			c.state, c.remaining = contentBody, size
		}
	case contentBody:
		if f.Type != amqp.FrameBody {
			return connErr(amqp.UnexpectedFrame, "UNEXPECTED_FRAME - expected content body, got non content body frame instead")
		}
		n := uint64(len(f.Payload))
		if n > c.remaining {
			return connErr(amqp.UnexpectedFrame, "UNEXPECTED_FRAME - content body of %d octets exceeds the %d remaining of the content header's body size", n, c.remaining)
		}
		c.remaining -= n
		if c.remaining == 0 {
			c.state = contentNone
		}
	}
	return nil
}

// closing reports whether either side has sent channel.close.
func (ch *channelState) closing() bool { return ch.clientClosed || ch.brokerClosed }

// isClosing reports whether either side has sent connection.close.
func (s *sessionState) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

func itoa(n int) string { return strconv.Itoa(n) }
