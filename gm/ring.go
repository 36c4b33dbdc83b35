package gm

import (
	"cmp"
	"errors"
	"slices"
)

// Errors returned by Ring.Propose.
var (
	// ErrNotMember: the ring has no installed view that contains this member
	// (not joined yet, or removed by a later view).
	ErrNotMember = errors.New("gm: not a member of the current view")
	// ErrWindowFull: Window of this member's ops are not yet stable. The
	// caller must wait for a Stable report (back-pressure).
	ErrWindowFull = errors.New("gm: send window full")
)

// Config tunes a Ring. Zero fields take the defaults shown.
type Config struct {
	Self Member
	// Window bounds this member's own unstable ops (default 4096).
	Window int
	// LinkWindow bounds ops of one stream sent to the successor and not yet
	// acknowledged (default 1024).
	LinkWindow int
	// MaxBuffer bounds ops of one stream a member holds; an op beyond it is
	// not accepted and the predecessor re-sends it later (default 2*Window).
	MaxBuffer int
	// MaxBatch bounds the ops in one data message (default 256).
	MaxBatch int
	// ResendTicks: ticks without acknowledgement progress before a link
	// goes back to its last acknowledged op and re-sends (default 10).
	ResendTicks int
	// GossipTicks: ticks between messages sent even when idle, which repair
	// lost acknowledgements and facts (default 3).
	GossipTicks int
}

func (c *Config) fill() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.Window, 4096)
	def(&c.LinkWindow, 1024)
	def(&c.MaxBuffer, 2*c.Window)
	def(&c.MaxBatch, 256)
	def(&c.ResendTicks, 10)
	def(&c.GossipTicks, 3)
}

// Ready is what the owner of a Ring must act on, returned by Ring.Ready.
type Ready struct {
	// Messages to send. Transport loss is tolerated; order per destination
	// should be kept.
	Messages []Message
	// Deliveries are other members' ops, in per-sender order, each exactly
	// once. The owner applies them and reports Applied when they are durable.
	Deliveries []Op
	// Stable is set when this member's own ops up to Stable.Seq became
	// stable: every member of the view has durably applied them.
	Stable uint64
	// NeedEpoch, when above the installed epoch, says a peer is on a newer
	// view: the owner should fetch and install it.
	NeedEpoch uint64
}

type stream struct {
	id        Member
	delivered uint64 // highest contiguous seq held (own stream: last proposed)
	applied   uint64 // highest contiguous seq durably applied
	stable    uint64 // highest seq known applied by every member of the view
	buf       []Op   // held, not yet stable: seqs buf[0].Seq..delivered
	// jumps: where delivery skipped ops that became stable before this
	// member joined; applied moves past a jump once the ops before it are.
	jumps []jump
}

type jump struct{ at, to uint64 }

func (s *stream) first() uint64 {
	if len(s.buf) > 0 {
		return s.buf[0].Seq
	}
	return s.delivered + 1
}

func (s *stream) get(seq uint64) *Op { return &s.buf[seq-s.buf[0].Seq] }

type linkStream struct {
	sent, acked uint64
	progress    uint64 // tick of last ack progress or (re)start
}

// link is the member's outgoing link to its successor in one epoch.
type link struct {
	to      Member
	streams map[Member]*linkStream
}

// Ring is the gm state machine of one member. It does no I/O and reads no
// clock: its owner feeds it messages (Step), time (Tick), views
// (InstallView), ops (Propose) and durability reports (Applied), and acts on
// Ready. A Ring is not safe for concurrent use.
type Ring struct {
	cfg     Config
	view    View
	member  bool // self is in view
	streams map[Member]*stream
	// facts[holder][stream] = applied, for holders in the view.
	facts map[Member]map[Member]uint64
	succ  *link
	pred  Member

	tick       uint64
	lastGossip uint64
	sendSucc   bool // a data message is due even without ops
	sendPred   bool // an ack is due
	deliveries []Op
	reported   uint64 // own stable last reported
	needEpoch  uint64
	msgs       []Message
	factCache  []Fact   // factList result until facts change; shared, read-only
	idCache    []Member // sorted stream ids until a stream is added
}

// NewRing returns the state machine of cfg.Self. It acts only after the
// first InstallView that contains cfg.Self.
func NewRing(cfg Config) *Ring {
	cfg.fill()
	return &Ring{
		cfg:     cfg,
		streams: make(map[Member]*stream),
		facts:   make(map[Member]map[Member]uint64),
	}
}

// View returns the installed view.
func (r *Ring) View() View { return r.view }

// Epoch returns the installed view's epoch (0 before the first).
func (r *Ring) Epoch() uint64 { return r.view.Epoch }

// IsMember reports whether self is in the installed view.
func (r *Ring) IsMember() bool { return r.member }

// Unstable returns how many of this member's own ops are not yet stable.
func (r *Ring) Unstable() int {
	s := r.streams[r.cfg.Self]
	if s == nil {
		return 0
	}
	return int(s.delivered - s.stable)
}

// Held returns how many ops this member buffers, over all streams.
func (r *Ring) Held() int {
	n := 0
	for _, s := range r.streams {
		n += len(s.buf)
	}
	return n
}

// Propose adds an op with data to this member's stream and returns its
// sequence number. The ring keeps data until the op is stable.
func (r *Ring) Propose(data []byte) (uint64, error) {
	if !r.member {
		return 0, ErrNotMember
	}
	s := r.streams[r.cfg.Self]
	if int(s.delivered-s.stable) >= r.cfg.Window {
		return 0, ErrWindowFull
	}
	s.delivered++
	s.applied = s.delivered
	s.buf = append(s.buf, Op{Sender: r.cfg.Self, Seq: s.delivered, Epoch: r.view.Epoch, Data: data})
	r.setFact(r.cfg.Self, r.cfg.Self, s.applied)
	r.updateStable(s)
	return s.delivered, nil
}

// Applied records that this member durably applied sender's ops up to seq
// (cumulative; ops must have been delivered).
func (r *Ring) Applied(sender Member, seq uint64) {
	s := r.streams[sender]
	if s == nil || sender == r.cfg.Self {
		return
	}
	seq = min(seq, s.delivered)
	for len(s.jumps) > 0 && seq >= s.jumps[0].at {
		seq = max(seq, s.jumps[0].to)
		s.jumps = s.jumps[1:]
	}
	if seq <= s.applied {
		return
	}
	s.applied = seq
	r.setFact(r.cfg.Self, sender, seq)
	r.sendPred = true
	r.sendSucc = true
	r.updateStable(s)
}

// Tick advances the ring's clock by one tick.
func (r *Ring) Tick() {
	r.tick++
	if !r.member {
		return
	}
	if r.succ != nil {
		for _, ls := range r.succ.streams {
			if ls.sent > ls.acked && r.tick-ls.progress >= uint64(r.cfg.ResendTicks) {
				ls.sent = ls.acked // go back and re-send
				ls.progress = r.tick
			}
		}
	}
	if r.tick-r.lastGossip >= uint64(r.cfg.GossipTicks) {
		r.lastGossip = r.tick
		r.sendSucc = true
		r.sendPred = true
	}
}

// LinkReset tells the ring that the connection to peer was lost: anything
// sent to it and not acknowledged is re-sent.
func (r *Ring) LinkReset(peer Member) {
	if r.succ == nil || r.succ.to != peer {
		return
	}
	for _, ls := range r.succ.streams {
		ls.sent = ls.acked
		ls.progress = r.tick
	}
}

// InstallView installs v if it is newer than the installed view. A member
// left out of v stops taking part.
func (r *Ring) InstallView(v View) {
	if v.Epoch <= r.view.Epoch {
		return
	}
	v.Members = slices.Clone(v.Members)
	r.view = v
	i := v.index(r.cfg.Self)
	r.member = i >= 0
	r.succ = nil
	r.pred = Member{}
	r.factCache = nil
	for h := range r.facts {
		if !v.Contains(h) {
			delete(r.facts, h)
		}
	}
	if !r.member {
		return
	}
	if r.streams[r.cfg.Self] == nil {
		r.streams[r.cfg.Self] = &stream{id: r.cfg.Self}
		r.setFact(r.cfg.Self, r.cfg.Self, 0)
	}
	n := len(v.Members)
	r.pred = v.Members[(i+n-1)%n]
	if to := v.Members[(i+1)%n]; to != r.cfg.Self {
		r.succ = &link{to: to, streams: make(map[Member]*linkStream)}
		for _, s := range r.streams {
			r.addLinkStream(s)
		}
	}
	for _, s := range r.streams {
		r.updateStable(s)
	}
	r.sendSucc, r.sendPred = true, true
}

func (r *Ring) addLinkStream(s *stream) {
	b := s.first()
	r.succ.streams[s.id] = &linkStream{sent: b - 1, acked: b - 1, progress: r.tick}
}

// Step feeds one received message to the ring.
func (r *Ring) Step(m Message) {
	if m.Epoch > r.view.Epoch {
		r.needEpoch = max(r.needEpoch, m.Epoch)
		return
	}
	if m.Epoch < r.view.Epoch || !r.member || m.To != r.cfg.Self {
		return
	}
	switch m.Type {
	case MsgData:
		if m.From != r.pred {
			return
		}
		r.mergeFacts(m.Facts)
		r.stepData(&m)
	case MsgAck:
		if r.succ == nil || m.From != r.succ.to {
			return
		}
		r.mergeFacts(m.Facts)
		r.stepAck(&m)
	}
}

func (r *Ring) stepData(m *Message) {
	for _, st := range m.Starts {
		if st.Seq == 0 || st.Stream == r.cfg.Self {
			continue
		}
		s := r.streams[st.Stream]
		if s == nil {
			// A stream new to this member: it holds nothing before the
			// link's start, below which every op was stable in a view
			// without this member.
			s = &stream{id: st.Stream, delivered: st.Seq - 1, applied: st.Seq - 1, stable: st.Seq - 1}
			r.streams[st.Stream] = s
			r.setFact(r.cfg.Self, s.id, s.applied)
			if r.succ != nil {
				r.addLinkStream(s)
			}
			continue
		}
		if st.Seq > s.delivered+1 {
			r.skip(s, st.Seq-1)
		}
	}
	for _, op := range m.Ops {
		s := r.streams[op.Sender]
		if s == nil || op.Seq != s.delivered+1 || len(s.buf) >= r.cfg.MaxBuffer {
			continue // duplicate, gap, unknown or over the bound: re-sent later
		}
		s.delivered++
		s.buf = append(s.buf, op)
		r.deliveries = append(r.deliveries, op)
	}
	r.sendPred = true
}

// skip moves s past ops up to seq that the predecessor has forgotten: they
// became stable in a view this member was not in (had it been, it would
// hold them), so they were sent before it joined.
func (r *Ring) skip(s *stream, seq uint64) {
	for i := range s.buf {
		s.buf[i] = Op{}
	}
	s.buf = nil
	if s.applied == s.delivered {
		s.applied = seq
		r.setFact(r.cfg.Self, s.id, seq)
	} else {
		s.jumps = append(s.jumps, jump{at: s.delivered, to: seq})
	}
	s.delivered = seq
	s.stable = max(s.stable, seq)
	if r.succ != nil {
		if ls := r.succ.streams[s.id]; ls != nil {
			ls.acked = max(ls.acked, seq)
			ls.sent = max(ls.sent, ls.acked)
		}
	}
	r.updateStable(s)
}

func (r *Ring) stepAck(m *Message) {
	for _, d := range m.Delivered {
		ls := r.succ.streams[d.Stream]
		if ls == nil {
			continue
		}
		if d.Seq > ls.acked {
			ls.acked = d.Seq
			ls.progress = r.tick
		}
		ls.sent = max(ls.sent, ls.acked)
	}
}

func (r *Ring) setFact(holder, stream Member, applied uint64) {
	r.factCache = nil
	f := r.facts[holder]
	if f == nil {
		f = make(map[Member]uint64)
		r.facts[holder] = f
	}
	if old, ok := f[stream]; !ok || applied > old {
		f[stream] = applied
	}
}

func (r *Ring) mergeFacts(fs []Fact) {
	var changed []Member
	for _, f := range fs {
		if f.Holder == r.cfg.Self || !r.view.Contains(f.Holder) {
			continue
		}
		h := r.facts[f.Holder]
		if h == nil {
			h = make(map[Member]uint64)
			r.facts[f.Holder] = h
		}
		if old, ok := h[f.Stream]; !ok || f.Applied > old {
			h[f.Stream] = f.Applied
			if !slices.Contains(changed, f.Stream) {
				changed = append(changed, f.Stream)
			}
			r.factCache = nil
		}
	}
	for _, id := range changed {
		if s := r.streams[id]; s != nil {
			r.updateStable(s)
		}
	}
	if len(changed) > 0 {
		r.sendSucc, r.sendPred = true, true
	}
}

// updateStable recomputes s.stable as the least applied seq over the view
// and forgets the ops below it.
func (r *Ring) updateStable(s *stream) {
	if !r.member {
		return
	}
	low := s.delivered
	for _, m := range r.view.Members {
		a, ok := r.facts[m][s.id]
		if !ok {
			return // a member we know nothing about holds nothing yet
		}
		low = min(low, a)
	}
	if low <= s.stable {
		return
	}
	s.stable = low
	k := 0
	for k < len(s.buf) && s.buf[k].Seq <= low {
		s.buf[k] = Op{}
		k++
	}
	s.buf = s.buf[k:]
	if len(s.buf) == 0 {
		s.buf = nil
	}
	if r.succ != nil {
		if ls := r.succ.streams[s.id]; ls != nil && ls.acked < low {
			// Every member, the successor included, applied these.
			ls.acked = low
			ls.sent = max(ls.sent, low)
		}
	}
}

// Ready returns what the owner must do now and clears it.
func (r *Ring) Ready() Ready {
	var rd Ready
	if r.needEpoch > r.view.Epoch {
		rd.NeedEpoch = r.needEpoch
	}
	r.needEpoch = 0
	if s := r.streams[r.cfg.Self]; s != nil && s.stable > r.reported {
		r.reported = s.stable
		rd.Stable = s.stable
	}
	rd.Deliveries, r.deliveries = r.deliveries, nil
	if r.member {
		if m, ok := r.dataMessage(); ok {
			r.msgs = append(r.msgs, m)
		}
		if r.sendPred && r.pred != r.cfg.Self {
			r.msgs = append(r.msgs, r.ackMessage())
		}
		r.sendPred = false
	}
	rd.Messages, r.msgs = r.msgs, nil
	return rd
}

// HasReady reports whether Ready would return something to do.
func (r *Ring) HasReady() bool {
	if len(r.deliveries) > 0 || len(r.msgs) > 0 || r.needEpoch > r.view.Epoch {
		return true
	}
	if s := r.streams[r.cfg.Self]; s != nil && s.stable > r.reported {
		return true
	}
	if !r.member {
		return false
	}
	if r.sendPred && r.pred != r.cfg.Self {
		return true
	}
	if r.succ == nil {
		return false
	}
	if r.sendSucc {
		return true
	}
	for id, ls := range r.succ.streams {
		if r.canSend(id, ls) {
			return true
		}
	}
	return false
}

// canSend reports whether the link has an op of stream id to send now.
func (r *Ring) canSend(id Member, ls *linkStream) bool {
	if id == r.succ.to {
		return false // the op's sender has it
	}
	s := r.streams[id]
	return ls.sent < s.delivered && ls.sent-ls.acked < uint64(r.cfg.LinkWindow)
}

func (r *Ring) sortedStreams() []Member {
	if len(r.idCache) == len(r.streams) {
		return r.idCache
	}
	ids := make([]Member, 0, len(r.streams))
	for id := range r.streams {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b Member) int {
		if c := cmp.Compare(a.ID, b.ID); c != 0 {
			return c
		}
		return cmp.Compare(a.Inc, b.Inc)
	})
	r.idCache = ids
	return ids
}

func (r *Ring) dataMessage() (Message, bool) {
	if r.succ == nil {
		r.sendSucc = false
		return Message{}, false
	}
	m := Message{Type: MsgData, Epoch: r.view.Epoch, From: r.cfg.Self, To: r.succ.to}
	for _, id := range r.sortedStreams() {
		ls := r.succ.streams[id]
		if ls == nil {
			continue
		}
		s := r.streams[id]
		m.Starts = append(m.Starts, StreamSeq{Stream: id, Seq: s.first()})
		for len(m.Ops) < r.cfg.MaxBatch && r.canSend(id, ls) {
			seq := ls.sent + 1
			if len(s.buf) == 0 {
				ls.sent = s.delivered // all stable: every member has them
				break
			}
			if seq < s.buf[0].Seq {
				ls.sent = s.buf[0].Seq - 1 // forgotten: stable everywhere
				continue
			}
			m.Ops = append(m.Ops, *s.get(seq))
			ls.sent = seq
		}
	}
	if len(m.Ops) == 0 && !r.sendSucc {
		return Message{}, false
	}
	r.sendSucc = false
	m.Facts = r.factList()
	return m, true
}

func (r *Ring) ackMessage() Message {
	m := Message{Type: MsgAck, Epoch: r.view.Epoch, From: r.cfg.Self, To: r.pred}
	for _, id := range r.sortedStreams() {
		m.Delivered = append(m.Delivered, StreamSeq{Stream: id, Seq: r.streams[id].delivered})
	}
	m.Facts = r.factList()
	return m
}

// factList returns the facts about view members. The slice is shared by the
// messages built until the facts change: nobody may modify it.
func (r *Ring) factList() []Fact {
	if r.factCache != nil {
		return r.factCache
	}
	fs := []Fact{}
	for _, h := range r.view.Members {
		for st, a := range r.facts[h] {
			fs = append(fs, Fact{Holder: h, Stream: st, Applied: a})
		}
	}
	r.factCache = fs
	return fs
}
