package gm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// NodeConfig configures a Node: the I/O driver around a Ring.
type NodeConfig struct {
	// ID is this node's stable name; its incarnation comes from the view
	// that admits it.
	ID string
	// Ring tunes the state machine (Self is filled in by the node).
	Ring Config
	// Listener accepts peer connections; the node closes it on Close.
	Listener net.Listener
	// Resolve maps a peer ID to its gm address.
	Resolve func(id string) string
	// Auth authenticates peers in both directions.
	Auth AuthConfig
	// Deliver is called for each op delivered to this member, in order, on
	// the node's goroutine. It must not block for long; report durability
	// later with Node.Applied.
	Deliver func(Op)
	// OnHeartbeat, if set, is called whenever a frame arrives from peer.
	// It is called from connection goroutines, concurrently: keep it short.
	OnHeartbeat func(peer string)
	// OnNeedEpoch, if set, is called (on the node goroutine) when a peer is
	// on a newer view epoch than the installed one.
	OnNeedEpoch func(epoch uint64)
	// OnReset, if set, is called (on the node goroutine) when a view admits
	// this node as a new incarnation: the ring starts afresh and the
	// application must discard what it applied before.
	OnReset func(self Member)
	// Handoff takes connections on the ring's listener that authenticated
	// for another purpose (the sidecars' peer link shares the gm port): the
	// handler owns conn from then on and runs on the connection's
	// goroutine; the node closes conn when it closes. The key "gm" is
	// the ring's own and cannot be handed off.
	Handoff map[string]func(conn net.Conn, peer string)

	TickInterval      time.Duration // Ring.Tick period (default 10ms)
	HeartbeatInterval time.Duration // heartbeat frames to every peer (default 100ms)
	DialTimeout       time.Duration // default 2s
	WriteTimeout      time.Duration // default 5s
	ReadTimeout       time.Duration // idle peer link timeout (default 10*HeartbeatInterval)
	QueueFrames       int           // outgoing frames queued per peer (default 256)
	Logger            zerolog.Logger
}

func (c *NodeConfig) fill() error {
	if c.ID == "" || len(c.ID) > MaxIDLen {
		return fmt.Errorf("gm: bad node id %q", c.ID)
	}
	if c.Listener == nil || c.Resolve == nil {
		return errors.New("gm: node needs a Listener and a Resolve function")
	}
	if err := c.Auth.Validate(); err != nil {
		return err
	}
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.TickInterval, 10*time.Millisecond)
	def(&c.HeartbeatInterval, 100*time.Millisecond)
	def(&c.DialTimeout, 2*time.Second)
	def(&c.WriteTimeout, 5*time.Second)
	def(&c.ReadTimeout, 10*c.HeartbeatInterval)
	if c.QueueFrames <= 0 {
		c.QueueFrames = 256
	}
	c.Ring.fill()
	return nil
}

// Node runs one member of the ring over TCP. Its methods are safe for
// concurrent use. Goroutines: one that owns the Ring, the accept loop, one
// reader per accepted connection and one writer per peer; Close stops and
// waits for all of them.
type Node struct {
	cfg      NodeConfig
	purposes []string // accepted on the listener: "gm" and cfg.Handoff's
	log      zerolog.Logger
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	inbox chan Message
	wake  chan struct{}

	// mu guards the fields below (handed from other goroutines to the
	// node goroutine, or published by it).
	mu        sync.Mutex
	applied   map[Member]uint64
	linksDown map[string]bool
	nextView  *View
	view      View
	self      Member
	stable    uint64
	stableCh  chan struct{} // closed and replaced when stable advances
	lastHeard map[string]time.Time
	member    bool     // self is in the installed view
	nextSeq   uint64   // last seq handed out by Propose
	pending   [][]byte // proposed, not yet given to the ring (bounded by the window)
	// proposeAt[seq%Window] is when own op seq was proposed (unix nanos),
	// for the latency histogram and lags (stats.go).
	proposeAt []int64

	// Counters for Stats: written by Propose and the node goroutine.
	proposed    atomic.Uint64
	stableTotal atomic.Uint64
	latency     histogram
	statsReq    chan chan Stats

	// owned by the node goroutine
	ring    *Ring
	writers map[string]*writerHandle
}

type writerHandle struct {
	w      *peerWriter
	cancel context.CancelFunc
	done   chan struct{}
}

// ErrClosed is returned by a Node after Close.
var ErrClosed = errors.New("gm: node closed")

// StartNode validates cfg and starts the node's goroutines. The node does
// nothing until InstallView gives it a view containing cfg.ID.
func StartNode(cfg NodeConfig) (*Node, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Node{
		cfg: cfg, log: cfg.Logger.With().Str("gm", cfg.ID).Logger(),
		ctx: ctx, cancel: cancel,
		inbox:     make(chan Message, 256),
		wake:      make(chan struct{}, 1),
		applied:   map[Member]uint64{},
		linksDown: map[string]bool{},
		stableCh:  make(chan struct{}),
		lastHeard: map[string]time.Time{},
		writers:   map[string]*writerHandle{},
		purposes:  []string{"gm"},
		proposeAt: make([]int64, cfg.Ring.Window),
		statsReq:  make(chan chan Stats),
	}
	for p := range cfg.Handoff {
		if p != "gm" {
			n.purposes = append(n.purposes, p)
		}
	}
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		n.acceptLoop(ctx, cfg.Listener)
	}()
	go func() {
		defer n.wg.Done()
		n.loop(ctx)
	}()
	return n, nil
}

// Close stops the node and waits for its goroutines.
func (n *Node) Close() error {
	n.cancel()
	err := n.cfg.Listener.Close()
	n.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// Addr is the listener's address.
func (n *Node) Addr() net.Addr { return n.cfg.Listener.Addr() }

// InstallView hands the node a committed view; older ones are ignored.
func (n *Node) InstallView(v View) {
	n.mu.Lock()
	if n.nextView == nil || v.Epoch > n.nextView.Epoch {
		n.nextView = &v
	}
	n.mu.Unlock()
	n.poke()
}

// View returns the installed view and this node's member entry in it
// (zero Member if it is not in it).
func (n *Node) View() (View, Member) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.view, n.self
}

// Propose multicasts data and returns its sequence number in this member's
// stream. It blocks while Ring.Window ops are unstable (back-pressure) until
// ctx ends. data must not be modified afterwards. Proposals from concurrent
// callers are ordered by their sequence numbers.
func (n *Node) Propose(ctx context.Context, data []byte) (uint64, error) {
	for {
		n.mu.Lock()
		if !n.member {
			n.mu.Unlock()
			return 0, ErrNotMember
		}
		if n.nextSeq-n.stable < uint64(n.cfg.Ring.Window) {
			n.nextSeq++
			seq := n.nextSeq
			n.pending = append(n.pending, data)
			n.proposeAt[seq%uint64(len(n.proposeAt))] = time.Now().UnixNano()
			n.mu.Unlock()
			n.proposed.Add(1)
			n.poke()
			return seq, nil
		}
		ch := n.stableCh
		n.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-n.ctx.Done():
			return 0, ErrClosed
		}
	}
}

// WaitEpoch blocks until a view with at least epoch is installed.
func (n *Node) WaitEpoch(ctx context.Context, epoch uint64) error {
	for {
		n.mu.Lock()
		e, ch := n.view.Epoch, n.stableCh
		n.mu.Unlock()
		if e >= epoch {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-n.ctx.Done():
			return ErrClosed
		}
	}
}

// Stable returns the highest own seq known stable.
func (n *Node) Stable() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stable
}

// WaitStable blocks until own op seq is stable or ctx ends. It returns
// ErrNotMember if this node leaves the view (or rejoins as a new
// incarnation, whose stream starts again at 1) first.
func (n *Node) WaitStable(ctx context.Context, seq uint64) error {
	n.mu.Lock()
	self := n.self
	n.mu.Unlock()
	for {
		n.mu.Lock()
		st, ch, member, now := n.stable, n.stableCh, n.member, n.self
		n.mu.Unlock()
		if st >= seq && now == self {
			return nil
		}
		if !member || now != self {
			return ErrNotMember
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-n.ctx.Done():
			return ErrClosed
		}
	}
}

// Applied reports that sender's ops up to seq are durably applied here.
// It never blocks.
func (n *Node) Applied(sender Member, seq uint64) {
	n.mu.Lock()
	if seq > n.applied[sender] {
		n.applied[sender] = seq
	}
	n.mu.Unlock()
	n.poke()
}

// LastHeard returns when a frame last arrived from peer (zero if never).
func (n *Node) LastHeard(peer string) time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.lastHeard[peer]
}

func (n *Node) heard(peer string) {
	n.mu.Lock()
	n.lastHeard[peer] = time.Now()
	n.mu.Unlock()
	if n.cfg.OnHeartbeat != nil {
		n.cfg.OnHeartbeat(peer)
	}
}

func (n *Node) linkDown(peer string) {
	n.mu.Lock()
	n.linksDown[peer] = true
	n.mu.Unlock()
	n.poke()
}

func (n *Node) poke() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// loop owns the Ring.
func (n *Node) loop(ctx context.Context) {
	tick := time.NewTicker(n.cfg.TickInterval)
	defer tick.Stop()
	hb := time.NewTicker(n.cfg.HeartbeatInterval)
	defer hb.Stop()
	defer n.stopWriters(nil)
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-n.inbox:
			n.step(m)
			for more := true; more; {
				select {
				case m := <-n.inbox:
					n.step(m)
				default:
					more = false
				}
			}
		case <-tick.C:
			if n.ring != nil {
				n.ring.Tick()
			}
		case <-hb.C:
			hbf := appendFrame(nil, frameHeartbeat, nil)
			for _, w := range n.writers {
				w.w.send(hbf)
			}
		case <-n.wake:
		case reply := <-n.statsReq:
			reply <- n.stats()
			continue
		}
		n.takeHandoffs()
		n.flush()
	}
}

func (n *Node) step(m Message) {
	if n.ring != nil {
		n.ring.Step(m)
	}
}

// takeHandoffs applies what other goroutines handed over under mu.
func (n *Node) takeHandoffs() {
	n.mu.Lock()
	v := n.nextView
	n.nextView = nil
	var applied map[Member]uint64
	if len(n.applied) > 0 {
		applied, n.applied = n.applied, map[Member]uint64{}
	}
	var down map[string]bool
	if len(n.linksDown) > 0 {
		down, n.linksDown = n.linksDown, map[string]bool{}
	}
	n.mu.Unlock()
	if v != nil {
		n.installView(*v)
	}
	if n.ring == nil {
		return
	}
	n.mu.Lock()
	props := n.pending
	n.pending = nil
	n.mu.Unlock()
	for _, data := range props {
		if _, err := n.ring.Propose(data); err != nil {
			// Only after a view change the node has not yet published.
			n.log.Warn().Err(err).Msg("gm dropped a proposal")
		}
	}
	for s, seq := range applied {
		n.ring.Applied(s, seq)
	}
	for id := range down {
		for _, m := range n.ring.View().Members {
			if m.ID == id {
				n.ring.LinkReset(m)
			}
		}
	}
}

func (n *Node) installView(v View) {
	if n.ring != nil && v.Epoch <= n.ring.Epoch() {
		return
	}
	var self Member
	for _, m := range v.Members {
		if m.ID == n.cfg.ID {
			self = m
		}
	}
	if self.ID != "" && (n.ring == nil || n.ring.cfg.Self != self) {
		rc := n.cfg.Ring
		rc.Self = self
		n.ring = NewRing(rc)
		n.mu.Lock()
		n.stable, n.nextSeq, n.pending = 0, 0, nil
		n.mu.Unlock()
		if n.cfg.OnReset != nil {
			n.cfg.OnReset(self)
		}
		n.log.Info().Stringer("self", self).Uint64("epoch", v.Epoch).Msg("gm joined ring")
	}
	if n.ring != nil {
		n.ring.InstallView(v)
	}
	n.mu.Lock()
	n.view, n.self = v, self
	n.member = n.ring != nil && n.ring.IsMember()
	if !n.member {
		n.pending = nil
	}
	close(n.stableCh) // wake waiters to re-check membership
	n.stableCh = make(chan struct{})
	n.mu.Unlock()
	keep := map[string]bool{}
	for _, m := range v.Members {
		if m.ID != n.cfg.ID {
			keep[m.ID] = true
			if n.writers[m.ID] == nil {
				n.startWriter(m.ID)
			}
		}
	}
	n.stopWriters(keep)
	n.log.Info().Uint64("epoch", v.Epoch).Int("members", len(v.Members)).Msg("gm view installed")
}

func (n *Node) startWriter(id string) {
	ctx, cancel := context.WithCancel(n.ctx)
	h := &writerHandle{
		w: &peerWriter{
			id: id, n: n, queue: make(chan []byte, n.cfg.QueueFrames),
			log: n.log.With().Str("peer", id).Logger(),
		},
		cancel: cancel, done: make(chan struct{}),
	}
	n.writers[id] = h
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer close(h.done)
		h.w.run(ctx)
	}()
}

// stopWriters stops the writers not in keep (all of them for nil) and
// waits for them.
func (n *Node) stopWriters(keep map[string]bool) {
	for id, h := range n.writers {
		if !keep[id] {
			h.cancel()
			<-h.done
			delete(n.writers, id)
		}
	}
}

// flush acts on the ring's Ready until it has nothing more.
func (n *Node) flush() {
	if n.ring == nil {
		return
	}
	for i := 0; i < 64 && n.ring.HasReady(); i++ {
		rd := n.ring.Ready()
		for _, op := range rd.Deliveries {
			if n.cfg.Deliver != nil {
				n.cfg.Deliver(op)
			}
		}
		if rd.Stable > 0 {
			n.mu.Lock()
			if rd.Stable > n.stable {
				now := time.Now()
				for seq := n.stable + 1; seq <= rd.Stable; seq++ {
					if t := n.proposeAt[seq%uint64(len(n.proposeAt))]; t != 0 {
						n.latency.observe(now.Sub(time.Unix(0, t)))
					}
				}
				n.stableTotal.Add(rd.Stable - n.stable)
			}
			n.stable = rd.Stable
			close(n.stableCh)
			n.stableCh = make(chan struct{})
			n.mu.Unlock()
		}
		if rd.NeedEpoch > 0 && n.cfg.OnNeedEpoch != nil {
			n.cfg.OnNeedEpoch(rd.NeedEpoch)
		}
		for i := range rd.Messages {
			m := &rd.Messages[i]
			w := n.writers[m.To.ID]
			if w == nil {
				continue
			}
			f := make([]byte, 5, 64+estimateSize(m))
			f = AppendMessage(f, m)
			putFrameHeader(f, frameMsg)
			if !w.w.send(f) {
				n.log.Debug().Str("peer", m.To.ID).Msg("gm peer queue full; message dropped for re-send")
			}
		}
	}
	if n.ring.HasReady() {
		n.poke() // yield to inputs, come back for the rest
	}
}

func putFrameHeader(f []byte, kind byte) {
	n := len(f) - 4
	f[0], f[1], f[2], f[3] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	f[4] = kind
}

func estimateSize(m *Message) int {
	s := 0
	for i := range m.Ops {
		s += len(m.Ops[i].Data) + 32
	}
	return s + 48*len(m.Facts)
}
