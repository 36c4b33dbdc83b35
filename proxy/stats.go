package proxy

import (
	"maps"
	"sync"
	"sync/atomic"
)

// Traffic is what one kind of session carried: frames and bytes read from
// the client (towards the broker) and from the broker (towards the client).
// Bytes count whole frames as read, headers and frame ends included.
type Traffic struct {
	FramesFromClient, BytesFromClient uint64
	FramesToClient, BytesToClient     uint64
}

func (t *Traffic) add(o Traffic) {
	t.FramesFromClient += o.FramesFromClient
	t.BytesFromClient += o.BytesFromClient
	t.FramesToClient += o.FramesToClient
	t.BytesToClient += o.BytesToClient
}

// Stats is a snapshot of a Server's counters (Server.Stats). Sessions are
// counted apart by where they come from: Clients are connections accepted
// on the server's listeners, Legs are session legs another sidecar's front
// opened here over the peer link (ServeConn). Counters only grow.
type Stats struct {
	// ClientsOpen and LegsOpen are the sessions open now.
	ClientsOpen, LegsOpen int64
	// ClientsTotal and LegsTotal are the sessions started since the
	// server was made.
	ClientsTotal, LegsTotal uint64
	// ClientTraffic and LegTraffic are the frames and bytes they carried
	// (ended sessions, and open ones up to their last read batch).
	ClientTraffic, LegTraffic Traffic
	// BadInput counts sessions closed for the client's bad input, by the
	// AMQP reply code they were closed with ("501", "505", ...), or
	// "protocol_header" (not AMQP 0-9-1: answered with our header) and
	// "proxy_header" (a broken or refused PROXY protocol header).
	BadInput map[string]uint64
	// Moved counts sessions moved to a new leg (Options.Resume), Cancels
	// the basic.cancel sent then to x-cancel-on-ha-failover consumers, and
	// Resent the unconfirmed publishes re-sent on the new leg.
	Moved, Cancels, Resent uint64
	// Deduplicated counts re-sent publishes this node's core dropped
	// because the node had stored them already.
	Deduplicated uint64
	// ConfirmsWithheld is the publishes the master's broker confirmed
	// whose confirm waits, now, for the ring to report them stable.
	ConfirmsWithheld int64
}

// BadInputProtocolHeader and BadInputProxyHeader are Stats.BadInput's keys
// for bad input that has no reply code.
const (
	BadInputProtocolHeader = "protocol_header"
	BadInputProxyHeader    = "proxy_header"
)

// serverStats are the server's counters. Per frame, a pump only adds to
// its session's own counters (sessionTraffic), and publishes them with
// atomic stores once per read batch; a session's totals move to done when
// it ends, under mu with its removal from the live set, so that a
// snapshot (done plus the live sessions) never counts one twice.
type serverStats struct {
	clientsTotal, legsTotal atomic.Uint64
	resent                  atomic.Uint64

	mu          sync.Mutex // guards the fields below; taken after Server.mu, never before
	clientsDone Traffic
	legsDone    Traffic
	badInput    map[string]uint64
}

// sessionTraffic is one session's counters: each field has one writer (the
// client pump the FromClient ones, the broker pump the others).
type sessionTraffic struct {
	framesFromClient, bytesFromClient atomic.Uint64
	framesToClient, bytesToClient     atomic.Uint64
}

func (t *sessionTraffic) load() Traffic {
	return Traffic{
		FramesFromClient: t.framesFromClient.Load(), BytesFromClient: t.bytesFromClient.Load(),
		FramesToClient: t.framesToClient.Load(), BytesToClient: t.bytesToClient.Load(),
	}
}

// pumpCount is a pump's running count, published to its session's atomics
// at the end of each read batch (publish) rather than per frame.
type pumpCount struct{ frames, bytes uint64 }

func (c *pumpCount) publish(frames, bytes *atomic.Uint64) {
	frames.Store(c.frames)
	bytes.Store(c.bytes)
}

// badInput counts a session closed for the client's bad input.
func (st *serverStats) badInputSeen(key string) {
	st.mu.Lock()
	if st.badInput == nil {
		st.badInput = map[string]uint64{}
	}
	st.badInput[key]++
	st.mu.Unlock()
}

// Stats returns a snapshot of the server's counters. It is cheap enough to
// call at every scrape: it walks the open sessions once.
func (s *Server) Stats() Stats {
	var out Stats
	s.mu.Lock()
	for _, sess := range s.live {
		t := sess.traffic.load()
		out.ConfirmsWithheld += sess.st.withheld.Load()
		if sess.served {
			out.LegsOpen++
			out.LegTraffic.add(t)
		} else {
			out.ClientsOpen++
			out.ClientTraffic.add(t)
		}
	}
	s.stats.mu.Lock()
	out.ClientTraffic.add(s.stats.clientsDone)
	out.LegTraffic.add(s.stats.legsDone)
	out.BadInput = maps.Clone(s.stats.badInput)
	s.stats.mu.Unlock()
	s.mu.Unlock()
	if out.BadInput == nil {
		out.BadInput = map[string]uint64{}
	}
	out.ClientsTotal = s.stats.clientsTotal.Load()
	out.LegsTotal = s.stats.legsTotal.Load()
	out.Moved = uint64(s.moved.Load())
	out.Cancels = uint64(s.cancels.Load())
	out.Resent = s.stats.resent.Load()
	out.Deduplicated = uint64(s.deduped.Load())
	return out
}

// sessionEnded moves an ended session's traffic to the totals; the caller
// holds s.mu and removes the session from live under it.
func (s *Server) sessionEnded(sess *session) {
	t := sess.traffic.load()
	s.stats.mu.Lock()
	if sess.served {
		s.stats.legsDone.add(t)
	} else {
		s.stats.clientsDone.add(t)
	}
	s.stats.mu.Unlock()
}

// badInputKey is Stats.BadInput's key for a close with code (0: a
// handshake refused without a reply code, as RabbitMQ refuses some).
func badInputKey(code uint16) string {
	if code == 0 {
		return "handshake"
	}
	return itoa(int(code))
}
