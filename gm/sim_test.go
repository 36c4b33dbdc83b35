package gm

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

var (
	long  = flag.Bool("long", false, "run many more simulation seeds")
	seedF = flag.Uint64("seed", 0, "run only this simulation seed (replay)")
	seedN = flag.Int("seeds", 0, "number of simulation seeds (default 2000, 50000 with -long)")
	seed0 = flag.Uint64("firstseed", 1, "first simulation seed")
)

// The simulation: N members on an in-memory network that drops, delays,
// duplicates and partitions messages (order is kept per link, not across
// links), with a view oracle standing in for the raft view service. Members
// crash, get isolated and rejoin as new incarnations. Everything draws from
// one seeded generator, so a failing seed replays exactly.

type simConf struct {
	n          int     // initial members
	steps      int     // steps of faulty operation
	drop, dup  float64 // per message
	maxDelay   int     // link delay 1..maxDelay steps
	propose    float64 // chance per step that a member proposes
	apply      float64 // chance per step that a member applies what it holds
	faults     float64 // chance per step of a crash, partition or heal
	detect     int     // steps before the oracle drops a dead/isolated member
	viewDelay  int     // max steps for a committed view to reach a member
	window     int
	noFaults   bool
	onlySender bool // only the first member proposes (replication's use)
}

type simNode struct {
	m       Member
	ring    *Ring
	alive   bool
	cutOff  bool // isolated by a partition
	pending []Op // delivered, not yet applied
	// delivered/applied ranges per stream, as the application saw them
	firstDel map[Member]uint64
	lastDel  map[Member]uint64
	lastApp  map[Member]uint64
	proposed uint64
	stable   uint64
	// ops proposed after this node was cut off (must never become stable
	// while it is isolated)
	cutAt uint64
}

type envelope struct {
	from, to Member
	msg      Message
	data     []byte // when set, msg travels encoded
	ops      bool
}

type simKey struct{ from, to Member }

type sim struct {
	t        *testing.T
	seed     uint64
	cfg      simConf
	rng      *rand.Rand
	now      int
	nodes    map[Member]*simNode // every incarnation ever
	current  map[string]*simNode // latest incarnation per id
	ids      []string
	buckets  map[int][]envelope
	linkLast map[simKey]int
	view     View // the oracle's committed view
	suspect  map[Member]int
	installs map[int][]install
	sentEp   map[StreamSeq]uint64 // op -> epoch it was proposed in
	trace    []string
	failed   bool
}

type install struct {
	node *simNode
	v    View
}

func newSim(t *testing.T, seed uint64, cfg simConf) *sim {
	s := &sim{
		t: t, seed: seed, cfg: cfg,
		rng:      rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		nodes:    map[Member]*simNode{},
		current:  map[string]*simNode{},
		buckets:  map[int][]envelope{},
		linkLast: map[simKey]int{},
		suspect:  map[Member]int{},
		installs: map[int][]install{},
		sentEp:   map[StreamSeq]uint64{},
	}
	s.view = View{Epoch: 1}
	for i := range cfg.n {
		id := fmt.Sprintf("n%d", i)
		s.ids = append(s.ids, id)
		nd := s.newNode(Member{ID: id, Inc: 1})
		s.view.Members = append(s.view.Members, nd.m)
	}
	for _, id := range s.ids {
		nd := s.current[id]
		nd.ring.InstallView(s.view)
		s.drain(nd)
	}
	return s
}

func (s *sim) newNode(m Member) *simNode {
	nd := &simNode{
		m: m, alive: true,
		ring:     NewRing(Config{Self: m, Window: s.cfg.window, ResendTicks: 8, GossipTicks: 3, MaxBatch: 16}),
		firstDel: map[Member]uint64{}, lastDel: map[Member]uint64{}, lastApp: map[Member]uint64{},
	}
	s.nodes[m] = nd
	s.current[m.ID] = nd
	return nd
}

func (s *sim) logf(format string, args ...any) {
	s.trace = append(s.trace, fmt.Sprintf("t=%d ", s.now)+fmt.Sprintf(format, args...))
}

func (s *sim) fail(format string, args ...any) {
	if s.failed {
		return
	}
	s.failed = true
	tail := s.trace
	if len(tail) > 40 {
		tail = tail[len(tail)-40:]
	}
	s.t.Errorf("seed %d (replay: go test ./gm -run TestSimProperties -seed %d): %s\nlast events:\n%s",
		s.seed, s.seed, fmt.Sprintf(format, args...), strings.Join(tail, "\n"))
}

func (s *sim) reachable(a, b *simNode) bool {
	return a.alive && b.alive && !a.cutOff && !b.cutOff || a == b
}

// drain acts on a node's Ready: sends, records deliveries, checks stability.
func (s *sim) drain(nd *simNode) {
	for nd.alive && nd.ring != nil && nd.ring.HasReady() {
		rd := nd.ring.Ready()
		for _, op := range rd.Deliveries {
			last, seen := nd.lastDel[op.Sender]
			if seen && op.Seq <= last {
				s.fail("%v delivered %v#%d after #%d", nd.m, op.Sender, op.Seq, last)
			}
			for q := last + 1; seen && q < op.Seq; q++ {
				if s.sentEp[StreamSeq{op.Sender, q}] >= nd.m.Inc {
					s.fail("%v skipped %v#%d sent in epoch %d after it joined", nd.m, op.Sender, q, s.sentEp[StreamSeq{op.Sender, q}])
				}
			}
			if !seen {
				nd.firstDel[op.Sender] = op.Seq
				nd.lastApp[op.Sender] = op.Seq - 1
			}
			if ep, ok := s.sentEp[StreamSeq{op.Sender, op.Seq}]; !ok {
				s.fail("%v delivered %v#%d that was never proposed", nd.m, op.Sender, op.Seq)
			} else if want := fmt.Sprintf("%v/%d", op.Sender, op.Seq); string(op.Data) != want || op.Epoch != ep {
				s.fail("%v delivered %v#%d with data %q epoch %d", nd.m, op.Sender, op.Seq, op.Data, op.Epoch)
			}
			nd.lastDel[op.Sender] = op.Seq
			nd.pending = append(nd.pending, op)
		}
		if rd.Stable > nd.stable {
			s.checkStable(nd, nd.stable+1, rd.Stable)
			nd.stable = rd.Stable
		}
		if rd.NeedEpoch > 0 && s.view.Epoch >= rd.NeedEpoch && !nd.cutOff {
			s.sendView(nd, s.view)
		}
		for i := range rd.Messages {
			s.send(nd, &rd.Messages[i])
		}
	}
}

// checkStable: an op reported stable is applied by every member of the
// sender's view that was a member when the op was sent.
func (s *sim) checkStable(nd *simNode, from, to uint64) {
	if nd.cutOff && to > nd.cutAt {
		s.fail("isolated %v saw its op #%d stable (cut off after #%d)", nd.m, to, nd.cutAt)
	}
	v := nd.ring.View()
	for q := from; q <= to; q++ {
		ep := s.sentEp[StreamSeq{nd.m, q}]
		for _, m := range v.Members {
			if m == nd.m || m.Inc > ep {
				continue
			}
			h := s.nodes[m]
			first, ok := h.firstDel[nd.m]
			if !ok || q < first || q > h.lastApp[nd.m] {
				s.fail("%v reports #%d (epoch %d) stable in view %d but %v has not applied it (first %d, applied %d)",
					nd.m, q, ep, v.Epoch, m, first, h.lastApp[nd.m])
				return
			}
		}
	}
}

func (s *sim) send(from *simNode, m *Message) {

	e := envelope{from: from.m, to: m.To, ops: len(m.Ops) > 0}
	if s.rng.IntN(8) == 0 { // exercise the codec on some messages
		e.data = AppendMessage(nil, m)
	} else {
		e.msg = *m
	}
	if s.rng.Float64() < s.cfg.drop {
		return
	}
	copies := 1
	if s.rng.Float64() < s.cfg.dup {
		copies = 2
	}
	k := simKey{from.m, m.To}
	for range copies {
		at := max(s.now+1+s.rng.IntN(s.cfg.maxDelay), s.linkLast[k])
		s.linkLast[k] = at
		s.buckets[at] = append(s.buckets[at], e)
	}
}

func (s *sim) sendView(nd *simNode, v View) {
	at := s.now + 1 + s.rng.IntN(s.cfg.viewDelay)
	s.installs[at] = append(s.installs[at], install{nd, v})
}

func (s *sim) commit(v View) {
	s.view = v
	s.logf("commit view %d %v", v.Epoch, v.Members)
	for _, id := range s.ids {
		nd := s.current[id]
		if nd.alive && !nd.cutOff {
			s.sendView(nd, v)
		}
	}
}

func (s *sim) down() int {
	n := 0
	for _, id := range s.ids {
		if nd := s.current[id]; !nd.alive || nd.cutOff || !s.view.Contains(nd.m) {
			n++
		}
	}
	return n
}

// step runs one time step.
func (s *sim) step(faults bool) {
	s.now++
	for _, e := range s.buckets[s.now] {
		to := s.nodes[e.to]
		from := s.nodes[e.from]
		if to == nil || !s.reachable(from, to) {
			continue
		}
		m := e.msg
		if e.data != nil {
			var err error
			if m, err = ParseMessage(e.data); err != nil {
				s.fail("decode: %v", err)
				return
			}
		}
		to.ring.Step(m)
	}
	delete(s.buckets, s.now)
	for _, in := range s.installs[s.now] {
		if in.node.alive && !in.node.cutOff {
			in.node.ring.InstallView(in.v)
		}
	}
	delete(s.installs, s.now)
	for _, id := range s.ids {
		nd := s.current[id]
		if !nd.alive || nd.ring == nil {
			continue
		}
		nd.ring.Tick()
		if len(nd.pending) > 0 && s.rng.Float64() < s.cfg.apply {
			k := 1 + s.rng.IntN(len(nd.pending))
			for _, op := range nd.pending[:k] {
				nd.lastApp[op.Sender] = op.Seq
				nd.ring.Applied(op.Sender, op.Seq)
			}
			nd.pending = slices.Delete(nd.pending, 0, k)
		}
		if faults && (!s.cfg.onlySender || id == s.ids[0]) && s.rng.Float64() < s.cfg.propose {
			s.propose(nd)
		}
	}
	// Each member acts on everything of this step at once, as the driver
	// does after reading a batch.
	for _, id := range s.ids {
		s.drain(s.current[id])
	}
	s.oracle()
	if faults && !s.cfg.noFaults && s.rng.Float64() < s.cfg.faults {
		s.fault()
	}
}

func (s *sim) propose(nd *simNode) {
	seq := nd.ring.proposedNext()
	data := fmt.Appendf(nil, "%v/%d", nd.m, seq)
	ep := nd.ring.Epoch()
	s.sentEp[StreamSeq{nd.m, seq}] = ep
	got, err := nd.ring.Propose(data)
	if err != nil {
		delete(s.sentEp, StreamSeq{nd.m, seq})
		return
	}
	if got != seq {
		s.fail("%v proposed seq %d, want %d", nd.m, got, seq)
	}
	nd.proposed = got
}

// oracle: the view service. It removes members that are dead, cut off or
// removed-and-restarted for longer than detect, and admits new incarnations.
func (s *sim) oracle() {
	var keep []Member
	changed := false
	for _, m := range s.view.Members {
		nd := s.nodes[m]
		if !nd.alive || nd.cutOff || s.current[m.ID] != nd {
			s.suspect[m]++
			if s.suspect[m] >= s.cfg.detect {
				changed = true
				s.logf("oracle drops %v", m)
				continue
			}
		} else {
			delete(s.suspect, m)
		}
		keep = append(keep, m)
	}
	epoch := s.view.Epoch + 1
	for _, id := range s.ids {
		nd := s.current[id]
		if nd.alive && !nd.cutOff && !s.view.Contains(nd.m) && nd.m.Inc == 0 {
			nd.m.Inc = epoch // join with a new incarnation
			s.nodes[nd.m] = nd
			nd.ring = NewRing(Config{Self: nd.m, Window: s.cfg.window, ResendTicks: 8, GossipTicks: 3, MaxBatch: 16})
			keep = append(keep, nd.m)
			changed = true
			s.logf("oracle admits %v", nd.m)
		}
	}
	if changed {
		s.commit(View{Epoch: epoch, Members: keep})
	}
}

// restart replaces id's node by a fresh one waiting to join.
func (s *sim) restart(id string) {
	nd := &simNode{
		m: Member{ID: id}, alive: true,
		firstDel: map[Member]uint64{}, lastDel: map[Member]uint64{}, lastApp: map[Member]uint64{},
	}
	s.current[id] = nd
	s.logf("restart %s", id)
}

func (s *sim) fault() {
	f := (s.cfg.n - 1) / 2
	id := s.ids[s.rng.IntN(len(s.ids))]
	nd := s.current[id]
	switch k := s.rng.IntN(3); {
	case k == 0 && nd.alive && !nd.cutOff && s.view.Contains(nd.m) && s.down() < f:
		nd.alive = false
		s.logf("crash %v", nd.m)
	case k == 1 && nd.alive && !nd.cutOff && s.view.Contains(nd.m) && s.down() < f:
		nd.cutOff = true
		nd.cutAt = nd.proposed
		s.logf("isolate %v", nd.m)
	default:
		s.heal(nd)
	}
}

// heal brings a node back: a dead one restarts, an isolated one reconnects
// (restarting if the view dropped it meanwhile).
func (s *sim) heal(nd *simNode) {
	switch {
	case !nd.alive && nd.m.Inc != 0:
		s.restart(nd.m.ID)
	case nd.cutOff:
		nd.cutOff = false
		s.logf("reconnect %v", nd.m)
		if !s.view.Contains(nd.m) && s.current[nd.m.ID] == nd && nd.m.Inc != 0 {
			nd.alive = false
			s.restart(nd.m.ID)
		}
	}
}

func (s *sim) run() {
	for range s.cfg.steps {
		s.step(true)
		if s.failed {
			return
		}
	}
	// Quiesce: heal everything, no new faults or ops, lossless links.
	s.cfg.drop, s.cfg.dup = 0, 0
	for _, id := range s.ids {
		s.heal(s.current[id])
	}
	for i := 0; i < 5000 && !s.quiet(); i++ {
		s.step(false)
		if s.failed {
			return
		}
	}
	if !s.quiet() {
		s.fail("did not quiesce: %s", s.state())
		return
	}
	s.checkFinal()
}

func (s *sim) state() string {
	var b strings.Builder
	fmt.Fprintf(&b, "oracle view %d %v;", s.view.Epoch, s.view.Members)
	for _, id := range s.ids {
		nd := s.current[id]
		if nd.ring == nil {
			fmt.Fprintf(&b, " %v waiting to join;", nd.m)
			continue
		}
		fmt.Fprintf(&b, " %v alive=%v epoch=%d proposed=%d stable=%d pending=%d held=%d;",
			nd.m, nd.alive, nd.ring.Epoch(), nd.proposed, nd.stable, len(nd.pending), nd.ring.Held())
		for _, id := range nd.ring.sortedStreams() {
			st := nd.ring.streams[id]
			fmt.Fprintf(&b, "\n   %v: del=%d app=%d stable=%d buf=%d facts:", id, st.delivered, st.applied, st.stable, len(st.buf))
			for _, m := range nd.ring.view.Members {
				a, ok := nd.ring.facts[m][id]
				fmt.Fprintf(&b, " %v=%d/%v", m, a, ok)
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

func (s *sim) quiet() bool {
	for _, id := range s.ids {
		nd := s.current[id]
		if !nd.alive || nd.ring == nil || nd.ring.Epoch() != s.view.Epoch || !s.view.Contains(nd.m) {
			return false
		}
		if len(nd.pending) > 0 || nd.stable != nd.proposed || nd.ring.Held() > 0 {
			return false
		}
	}
	return len(s.buckets) == 0 || s.onlyIdle()
}

// onlyIdle: messages in flight carry no ops.
func (s *sim) onlyIdle() bool {
	for _, b := range s.buckets {
		for _, e := range b {
			if e.ops {
				return false
			}
		}
	}
	return true
}

// checkFinal: every op of a surviving sender proposed in a view containing a
// surviving receiver was delivered to it; all survivors agree on every
// stream's end.
func (s *sim) checkFinal() {
	for _, sid := range s.ids {
		snd := s.current[sid]
		for _, rid := range s.ids {
			rcv := s.current[rid]
			if rcv == snd {
				continue
			}
			for q := uint64(1); q <= snd.proposed; q++ {
				if s.sentEp[StreamSeq{snd.m, q}] < rcv.m.Inc {
					continue
				}
				if rcv.firstDel[snd.m] == 0 || q < rcv.firstDel[snd.m] || q > rcv.lastDel[snd.m] {
					s.fail("%v never delivered %v#%d (delivered %d..%d)", rcv.m, snd.m, q, rcv.firstDel[snd.m], rcv.lastDel[snd.m])
					return
				}
			}
		}
	}
	// Streams of departed senders: every survivor ends at the same seq.
	for m := range s.nodes {
		if s.view.Contains(m) {
			continue
		}
		end, set := uint64(0), false
		for _, id := range s.ids {
			nd := s.current[id]
			st := nd.ring.streams[m]
			if st == nil {
				continue
			}
			if set && st.delivered != end {
				s.fail("survivors disagree on departed %v: %v at %d, others at %d", m, nd.m, st.delivered, end)
				return
			}
			end, set = st.delivered, true
		}
	}
}

// proposedNext is the seq the next Propose will return (test helper).
func (r *Ring) proposedNext() uint64 {
	if s := r.streams[r.cfg.Self]; s != nil {
		return s.delivered + 1
	}
	return 1
}

func defaultSimConf(rng *rand.Rand) simConf {
	return simConf{
		n:         3 + rng.IntN(3),
		steps:     150,
		drop:      0.05 * rng.Float64(),
		dup:       0.05 * rng.Float64(),
		maxDelay:  1 + rng.IntN(6),
		propose:   0.1 + 0.3*rng.Float64(),
		apply:     0.3 + 0.6*rng.Float64(),
		faults:    0.02 * rng.Float64(),
		detect:    10 + rng.IntN(20),
		viewDelay: 1 + rng.IntN(10),
		window:    4 + rng.IntN(60),
	}
}

func TestSimProperties(t *testing.T) {
	seeds := 2000
	if *long {
		seeds = 50000
	}
	if testing.Short() {
		seeds = 200
	}
	if *seedN > 0 {
		seeds = *seedN
	}
	if *seedF != 0 {
		runSeeds(t, *seedF, 1)
		return
	}
	const shards = 4
	for sh := range shards {
		t.Run(fmt.Sprintf("shard%d", sh), func(t *testing.T) {
			t.Parallel()
			per := uint64((seeds + shards - 1) / shards)
			runSeeds(t, *seed0+uint64(sh)*per, per)
		})
	}
}

func runSeeds(t *testing.T, first, n uint64) {
	for seed := first; seed < first+n; seed++ {
		pick := rand.New(rand.NewPCG(seed, 7))
		s := newSim(t, seed, defaultSimConf(pick))
		s.run()
		if s.failed {
			return
		}
	}
}
