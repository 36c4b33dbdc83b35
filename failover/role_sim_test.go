package failover

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	simLong  = flag.Bool("long", false, "run many more role simulation seeds")
	simSeed  = flag.Uint64("seed", 0, "run only this role simulation seed (replay)")
	simSeeds = flag.Int("seeds", 0, "number of role simulation seeds (default 600, 30000 with -long)")
	simFirst = flag.Uint64("firstseed", 1, "first role simulation seed")
)

// The role simulation: N nodes, each a Role driven by a simulated driver,
// around a simulated view service standing in for raft: the side of a
// partition holding a majority of live sidecars has a leader; a node on
// that side is in touch with it on most steps (then its lease is renewed
// and it receives the latest committed view, as a raft follower does), the
// leader removes members it has not heard from for the failure timeout
// (longer than the lease), elects with Elect through Next, and serves
// joins, leaves and handovers. Brokers die, freeze and recover; sidecars
// crash, restart (replaying old views) and shut down; partitions come and
// go; masters are asked to hand over. Everything draws from one seeded
// generator, so a failing seed replays exactly. After every step the
// checker asserts the safety properties (see check), and at the end, with
// every fault healed, that the group settles on one serving master.

const simTick = 10 * time.Millisecond

var simT0 = time.Unix(1_700_000_000, 0)

var simQueues = []string{"q0", "q1", "q2", "q3"}

type roleSimConf struct {
	n         int
	steps     int
	lease     int     // steps a lease outlives the last contact
	failure   int     // steps of silence before the leader removes a member (> lease)
	contact   float64 // chance per step that a node on the majority side is in touch
	faults    float64 // chance per step of a fault
	delay     int     // max steps for a message or a driver completion
	syncDelay int     // max steps for a newly placed mirror to become synced
	promote   bool    // PromoteUnsynced (ha-promote-on-failure: always)
	handover  int     // HandoverTimeout, in steps
	retry     int     // Retry, in steps
}

type simRoleNode struct {
	id      string
	gen     int   // process generation: events for an older process are dropped
	role    *Role // nil while the process is down
	side    int
	broker  BrokerHealth // the broker's true health
	told    BrokerHealth // the last verdict the role was given
	contact int          // step of the last contact with the leader
	// What the driver did, for the checks.
	core      coreState
	lastEpoch uint64
	barrier   uint64 // promotion in progress (last ActApplyTail), 0 if none
	tail, rel map[uint64]bool
	resynced  uint64 // incarnation of the last ActResync
	clean     bool   // the broker holds mirror contents since that resync
}

type simEvent struct {
	id  string // "" for the leader
	gen int
	fn  func(nd *simRoleNode) []Action
}

type roleSim struct {
	t       *testing.T
	seed    uint64
	cfg     roleSimConf
	rng     *rand.Rand
	now     int
	nodes   []*simRoleNode
	byID    map[string]*simRoleNode
	view    View // the committed view
	byEpoch map[uint64]View
	history []View
	majSide int // side holding the raft majority, -1 when none
	heard   map[string]int
	events  map[int][]simEvent
	ops     uint64
	applied Progress
	syncAt  map[string]int // "id@inc/queue" -> step it is synced from
	bootOf  map[string]int // "id@inc" -> process generation that joined it
	openBy  map[uint64]string
	maxOpen uint64
	trace   []string
	failed  bool
}

func newRoleSim(t *testing.T, seed uint64, cfg roleSimConf) *roleSim {
	s := &roleSim{
		t: t, seed: seed, cfg: cfg,
		rng:     rand.New(rand.NewPCG(seed, seed^0x5851f42d4c957f2d)),
		byID:    map[string]*simRoleNode{},
		byEpoch: map[uint64]View{},
		majSide: -1,
		heard:   map[string]int{},
		events:  map[int][]simEvent{},
		applied: Progress{},
		syncAt:  map[string]int{},
		bootOf:  map[string]int{},
		openBy:  map[uint64]string{},
	}
	for i := range cfg.n {
		nd := &simRoleNode{id: fmt.Sprintf("n%d", i), broker: BrokerOK}
		s.nodes = append(s.nodes, nd)
		s.byID[nd.id] = nd
		s.start(nd)
	}
	return s
}

func (s *roleSim) at() time.Time { return simT0.Add(time.Duration(s.now) * simTick) }

func (s *roleSim) logf(format string, args ...any) {
	s.trace = append(s.trace, fmt.Sprintf("t=%d ", s.now)+fmt.Sprintf(format, args...))
}

func (s *roleSim) fail(format string, args ...any) {
	if s.failed {
		return
	}
	s.failed = true
	tail := s.trace
	if len(tail) > 80 {
		tail = tail[len(tail)-80:]
	}
	s.t.Errorf("seed %d (replay: go test ./failover -run TestRoleSim -seed %d -v): %s\nconf %+v\nlast events:\n%s",
		s.seed, s.seed, fmt.Sprintf(format, args...), s.cfg, strings.Join(tail, "\n"))
}

func (s *roleSim) leaseValid(nd *simRoleNode) bool {
	return nd.role != nil && s.now-nd.contact < s.cfg.lease
}

// start runs a new sidecar process on nd: a fresh role that replays some
// old views, then hears its broker's health.
func (s *roleSim) start(nd *simRoleNode) {
	nd.gen++
	nd.role = NewRole(RoleConfig{Self: nd.id,
		HandoverTimeout: time.Duration(s.cfg.handover) * simTick,
		Retry:           time.Duration(s.cfg.retry) * simTick})
	nd.contact = -1 << 30
	nd.core, nd.lastEpoch, nd.barrier = coreClosed, 0, 0
	nd.tail, nd.rel = map[uint64]bool{}, map[uint64]bool{}
	nd.resynced, nd.clean = 0, false
	s.logf("%s starts (gen %d)", nd.id, nd.gen)
	if len(s.history) > 0 {
		from := s.rng.IntN(len(s.history))
		for i := from; i < len(s.history) && i < from+3; i++ {
			s.deliver(nd, s.history[i])
		}
	}
	s.report(nd)
}

// report tells nd's role its broker's health after the probe's delay.
func (s *roleSim) report(nd *simRoleNode) {
	s.later(nd, func(nd *simRoleNode) []Action {
		nd.told = nd.broker
		s.logf("%s broker %v", nd.id, nd.broker)
		return nd.role.BrokerHealth(nd.broker)
	})
}

func (s *roleSim) delay() int { return 1 + s.rng.IntN(s.cfg.delay) }

// later runs fn on nd's current process after a delay (dropped if the
// process is gone by then).
func (s *roleSim) later(nd *simRoleNode, fn func(*simRoleNode) []Action) {
	at := s.now + s.delay()
	s.events[at] = append(s.events[at], simEvent{id: nd.id, gen: nd.gen, fn: fn})
}

// toLeader sends a request from nd to the leader: lost unless nd is on the
// majority side when it sends, and the majority still stands when it
// arrives.
func (s *roleSim) toLeader(nd *simRoleNode, fn func()) {
	if s.majSide < 0 || nd.side != s.majSide {
		return
	}
	at := s.now + s.delay()
	s.events[at] = append(s.events[at], simEvent{fn: func(*simRoleNode) []Action {
		if s.majSide >= 0 {
			fn()
		}
		return nil
	}})
}

// reply sends the leader's answer to a process: lost unless it is on the
// majority side when it arrives.
func (s *roleSim) reply(id string, gen int, fn func(*simRoleNode) []Action) {
	at := s.now + s.delay()
	s.events[at] = append(s.events[at], simEvent{id: id, gen: gen, fn: func(nd *simRoleNode) []Action {
		if nd.side != s.majSide {
			return nil
		}
		return fn(nd)
	}})
}

func (s *roleSim) deliver(nd *simRoleNode, v View) {
	before := nd.role.Epoch()
	acts := nd.role.ViewCommitted(v)
	if v.Epoch < before && len(acts) > 0 {
		s.fail("%s acted on view %d older than its %d: %v", nd.id, v.Epoch, before, acts)
	}
	s.handle(nd, acts)
}

func (s *roleSim) apply(cmd Command) (View, bool) {
	n, err := Next(s.view, cmd)
	if err != nil {
		s.logf("leader: %s %v: %v", cmd.Kind, cmd.IDs, err)
		return s.view, false
	}
	s.view = n
	s.byEpoch[n.Epoch] = n
	s.history = append(s.history, n)
	for _, m := range n.Members {
		if _, ok := s.heard[m.ID]; !ok || m.JoinEpoch == n.Epoch {
			s.heard[m.ID] = s.now
		}
	}
	if cmd.Kind != CmdSetSynced {
		s.logf("commit %s %v%s -> view %d master %q (since %d) members %v unsynced %v", cmd.Kind, cmd.IDs, cmd.Member.ID,
			n.Epoch, n.Master, n.MasterEpoch, n.Members, n.MasterUnsynced)
	}
	return n, true
}

func (s *roleSim) progress() Progress {
	p := Progress{}
	for _, m := range s.view.Members {
		p[m.ID] = s.applied[m.ID]
	}
	return p
}

// handle carries out a role's actions as a driver would, checking them.
func (s *roleSim) handle(nd *simRoleNode, acts []Action) {
	id, gen := nd.id, nd.gen
	for _, a := range acts {
		s.logf("%s (%v, inc %d, epoch %d) %T%+v", id, nd.role.State(), nd.role.Incarnation(), nd.role.Epoch(), a, a)
		switch a := a.(type) {
		case ActJoin:
			s.toLeader(nd, func() {
				if m, ok := s.view.Member(id); ok && s.bootOf[fmt.Sprintf("%s@%d", id, m.JoinEpoch)] == gen {
					// A repeated request of the same process: already in.
					s.reply(id, gen, func(nd *simRoleNode) []Action { return nd.role.Joined(m.JoinEpoch) })
					return
				}
				v, ok := s.apply(Command{Kind: CmdJoin, Member: Member{ID: id}, Progress: s.progress(), PromoteUnsynced: s.cfg.promote})
				if !ok {
					return
				}
				m, _ := v.Member(id)
				s.bootOf[fmt.Sprintf("%s@%d", id, m.JoinEpoch)] = gen
				s.applied[id] = s.ops
				s.reply(id, gen, func(nd *simRoleNode) []Action { return nd.role.Joined(m.JoinEpoch) })
			})
		case ActLeave:
			s.toLeader(nd, func() {
				if m, ok := s.view.Member(id); ok && m.JoinEpoch == a.Incarnation {
					s.apply(Command{Kind: CmdRemove, IDs: []string{id}, Progress: s.progress(), PromoteUnsynced: s.cfg.promote})
				}
			})
		case ActRequestHandover:
			s.toLeader(nd, func() {
				target := a.Target
				if target == "" {
					others := s.view.clone()
					others.Members = slices.DeleteFunc(others.Members, func(m Member) bool { return m.ID == others.Master })
					if target = Elect(others, s.progress(), false).Master; target == "" {
						return
					}
				}
				s.apply(Command{Kind: CmdHandover, IfEpoch: a.IfEpoch, IDs: []string{target}})
			})
		case ActApplyTail:
			nd.barrier = a.Barrier
			s.later(nd, func(nd *simRoleNode) []Action {
				nd.tail[a.Barrier] = true
				return nd.role.TailApplied(a.Barrier)
			})
		case ActReleaseHeld:
			if !nd.tail[a.Barrier] {
				s.fail("%s releases held copies before applying the tail to %d", id, a.Barrier)
			}
			nd.clean = false
			s.later(nd, func(nd *simRoleNode) []Action {
				nd.rel[a.Barrier] = true
				return nd.role.Released(a.Barrier)
			})
		case ActOpenCore:
			s.checkOpen(nd, a)
			nd.core, nd.barrier = coreServing, 0
		case ActFence:
			if nd.core == coreServing {
				nd.core = coreHeld
			}
		case ActCloseCore:
			nd.core = coreClosed
		case ActMoveSessions:
			if v, ok := s.byEpoch[a.Epoch]; a.To != id && (!ok || v.Master != a.To) {
				s.fail("%s moves sessions to %s, not the master of view %d", id, a.To, a.Epoch)
			}
			if a.To == id && nd.core != coreServing {
				s.fail("%s moves sessions to itself without serving", id)
			}
			s.later(nd, func(nd *simRoleNode) []Action { return nd.role.SessionsMoved(a.Epoch) })
		case ActResync:
			if a.Incarnation != nd.role.Incarnation() || a.Incarnation == 0 {
				s.fail("%s resyncs incarnation %d, is %d", id, a.Incarnation, nd.role.Incarnation())
			}
			nd.resynced, nd.clean = a.Incarnation, true
		default:
			s.fail("unknown action %T", a)
		}
	}
	if nd.role.State() == RoleLeft {
		s.logf("%s has left: process exits", id)
		nd.role, nd.core = nil, coreClosed
	}
}

// checkOpen: a core opens only on a promotion whose tail is applied and
// whose copies are released (or resumes a held one), with a valid lease and
// a healthy broker, as the master of a committed view, on an epoch no other
// node opened on and not older than one another opened on.
func (s *roleSim) checkOpen(nd *simRoleNode, a ActOpenCore) {
	switch {
	case nd.barrier != 0 && (!nd.tail[nd.barrier] || !nd.rel[nd.barrier]):
		s.fail("%s opens its core at %d before tail (%v) and release (%v) for %d", nd.id, a.Epoch, nd.tail[nd.barrier], nd.rel[nd.barrier], nd.barrier)
	case nd.barrier == 0 && nd.core != coreHeld:
		s.fail("%s opens its core at %d without a promotion or a held core", nd.id, a.Epoch)
	case !s.leaseValid(nd):
		s.fail("%s opens its core at %d without a valid lease", nd.id, a.Epoch)
	case nd.told != BrokerOK:
		s.fail("%s opens its core at %d with its broker %v", nd.id, a.Epoch, nd.told)
	}
	v, ok := s.byEpoch[a.Epoch]
	m, _ := v.Member(nd.id)
	switch {
	case !ok || v.Master != nd.id || m.JoinEpoch != nd.role.Incarnation():
		s.fail("%s (inc %d) opens its core at %d, whose view names %q (%v)", nd.id, nd.role.Incarnation(), a.Epoch, v.Master, v.Members)
	case s.openBy[a.Epoch] != "" && s.openBy[a.Epoch] != nd.id:
		s.fail("%s opens its core at %d, where %s opened", nd.id, a.Epoch, s.openBy[a.Epoch])
	case a.Epoch < s.maxOpen:
		s.fail("%s opens its core at %d after a core opened at %d", nd.id, a.Epoch, s.maxOpen)
	}
	s.openBy[a.Epoch] = nd.id
	s.maxOpen = max(s.maxOpen, a.Epoch)
}

// contact: the leader reaches the nodes on its side; each one in touch
// renews its lease and receives the latest view.
func (s *roleSim) contact() {
	count := map[int]int{}
	for _, nd := range s.nodes {
		if nd.role != nil {
			count[nd.side]++
		}
	}
	maj := -1
	for side, c := range count {
		if 2*c > s.cfg.n {
			maj = side
		}
	}
	if maj != s.majSide {
		s.majSide = maj
		s.logf("raft majority on side %d", maj)
		if maj >= 0 { // a new leader gives everyone a full timeout
			for _, m := range s.view.Members {
				s.heard[m.ID] = s.now
			}
		}
	}
	if maj < 0 {
		return
	}
	for _, nd := range s.nodes {
		if nd.role == nil || nd.side != maj || s.rng.Float64() >= s.cfg.contact {
			continue
		}
		nd.contact = s.now
		if _, ok := s.view.Member(nd.id); ok {
			s.heard[nd.id] = s.now
		}
		s.deliver(nd, s.view)
	}
}

// detect: the leader removes members it has not heard from for the
// failure timeout (never all of them).
func (s *roleSim) detect() {
	if s.majSide < 0 {
		return
	}
	var drop []string
	for _, m := range s.view.Members {
		if s.now-s.heard[m.ID] >= s.cfg.failure {
			drop = append(drop, m.ID)
		}
	}
	if len(drop) == 0 || len(drop) >= len(s.view.Members) {
		return
	}
	s.apply(Command{Kind: CmdRemove, IfEpoch: s.view.Epoch, IDs: drop, Progress: s.progress(), PromoteUnsynced: s.cfg.promote})
}

// mirrorsOf is where the policies place queue's mirrors in v: q0 has none,
// q1 is on every member, q2 on the oldest mirror (exactly 2), q3 on n1.
func mirrorsOf(v View, q string) []string {
	var others []string
	for _, m := range v.Members {
		if m.ID != v.Master {
			others = append(others, m.ID)
		}
	}
	switch q {
	case "q1":
		return others
	case "q2":
		if len(others) > 0 {
			return others[:1]
		}
	case "q3":
		if slices.Contains(others, "n1") {
			return []string{"n1"}
		}
	}
	return nil
}

// replicate: the serving master's ops reach the mirrors on its side; the
// replication layer pushes each queue's mirrors and synced set (a placed
// mirror becomes synced some time after it is first placed).
func (s *roleSim) replicate() {
	var m *simRoleNode
	for _, nd := range s.nodes {
		if nd.role != nil && nd.role.Serving() {
			m = nd
		}
	}
	if m == nil || m.side != s.majSide {
		return
	}
	s.ops += uint64(s.rng.IntN(3))
	s.applied[m.id] = s.ops
	for _, mem := range s.view.Members {
		nd := s.byID[mem.ID]
		if nd == m || nd.role == nil || nd.side != m.side || nd.told != BrokerOK ||
			nd.role.State() != RoleMirror || nd.role.Incarnation() != mem.JoinEpoch {
			continue
		}
		s.applied[mem.ID] = min(s.ops, s.applied[mem.ID]+1+uint64(s.rng.IntN(4)))
	}
	if s.view.Master != m.id {
		return
	}
	for _, q := range simQueues {
		mirrors := mirrorsOf(s.view, q)
		var synced []string
		for _, id := range mirrors {
			mem, _ := s.view.Member(id)
			k := fmt.Sprintf("%s@%d/%s", id, mem.JoinEpoch, q)
			if _, ok := s.syncAt[k]; !ok {
				s.syncAt[k] = s.now + s.rng.IntN(s.cfg.syncDelay+1)
			}
			if s.now >= s.syncAt[k] {
				synced = append(synced, id)
			}
		}
		if !slices.Equal(synced, s.view.Synced[q]) || !slices.Equal(mirrors, s.view.Mirrors[q]) {
			s.apply(Command{Kind: CmdSetSynced, Queue: q, IDs: synced, Mirrors: mirrors})
		}
	}
}

func (s *roleSim) step(faults bool) {
	s.now++
	s.contact()
	for _, nd := range s.nodes {
		if nd.role != nil {
			s.handle(nd, nd.role.Tick(s.at(), s.leaseValid(nd)))
		}
	}
	for _, ev := range s.events[s.now] {
		if ev.id == "" {
			ev.fn(nil)
			continue
		}
		if nd := s.byID[ev.id]; nd.role != nil && nd.gen == ev.gen {
			s.handle(nd, ev.fn(nd))
		}
	}
	delete(s.events, s.now)
	s.replicate()
	s.detect()
	if faults && s.rng.Float64() < s.cfg.faults {
		s.fault()
	}
	s.check()
}

// check asserts the safety properties after every step.
func (s *roleSim) check() {
	var serving []string
	for _, nd := range s.nodes {
		if nd.role == nil {
			continue
		}
		r := nd.role
		if r.Serving() != (nd.core == coreServing) {
			s.fail("%s: role serving %v, driver's core %v", nd.id, r.Serving(), nd.core)
		}
		if r.Serving() {
			serving = append(serving, nd.id)
			if !s.leaseValid(nd) {
				s.fail("%s serves without a valid lease (last contact t=%d)", nd.id, nd.contact)
			}
			if nd.told != BrokerOK {
				s.fail("%s serves with its broker %v", nd.id, nd.told)
			}
		}
		if e := r.Epoch(); e < nd.lastEpoch {
			s.fail("%s went back from epoch %d to %d", nd.id, nd.lastEpoch, e)
		}
		nd.lastEpoch = r.Epoch()
		if r.State() == RoleMirror && (nd.resynced != r.Incarnation() || !nd.clean) {
			s.fail("%s mirrors incarnation %d without a resync for it (last resync %d, clean %v)", nd.id, r.Incarnation(), nd.resynced, nd.clean)
		}
	}
	if len(serving) > 1 {
		s.fail("two masters serve at once: %v", serving)
	}
}

func (s *roleSim) fault() {
	nd := s.nodes[s.rng.IntN(len(s.nodes))]
	alive := nd.role != nil
	switch k := s.rng.IntN(12); {
	case k == 0 && alive:
		s.logf("crash %s", nd.id)
		nd.role, nd.core = nil, coreClosed
		nd.gen++
	case k <= 1 && !alive:
		s.start(nd)
	case k == 2:
		for _, x := range s.nodes {
			x.side = s.rng.IntN(2)
		}
		s.logf("partition %v", s.sides())
	case k == 3:
		for _, x := range s.nodes {
			x.side = 0
		}
		s.logf("heal")
	case k == 4:
		nd.side = 10 + s.rng.IntN(10)
		s.logf("isolate %s", nd.id)
	case k == 5 && alive:
		nd.broker = BrokerDown
		s.logf("%s broker dies", nd.id)
		s.report(nd)
	case k == 6 && alive:
		nd.broker = BrokerFrozen
		s.logf("%s broker freezes", nd.id)
		s.report(nd)
	case k == 7 && alive && nd.broker != BrokerOK:
		nd.broker = BrokerOK
		s.logf("%s broker recovers", nd.id)
		s.report(nd)
	case k == 8 || k == 9:
		for _, m := range s.nodes {
			if m.role != nil && m.role.Serving() {
				target := ""
				if s.rng.IntN(2) == 0 {
					target = s.nodes[s.rng.IntN(len(s.nodes))].id
				}
				s.logf("%s asked to hand over to %q", m.id, target)
				s.handle(m, m.role.HandoverRequested(target, s.at()))
			}
		}
	case k == 10 && alive:
		s.logf("%s shuts down", nd.id)
		s.handle(nd, nd.role.Shutdown(s.at()))
	case k == 11 && alive && len(s.history) > 0:
		v := s.history[s.rng.IntN(len(s.history))]
		s.logf("%s gets old view %d again", nd.id, v.Epoch)
		s.deliver(nd, v)
	}
}

func (s *roleSim) sides() string {
	var b strings.Builder
	for _, nd := range s.nodes {
		fmt.Fprintf(&b, "%s:%d ", nd.id, nd.side)
	}
	return b.String()
}

func (s *roleSim) state() string {
	var b strings.Builder
	fmt.Fprintf(&b, "view %d master %q members %v synced %v mirrors %v\n", s.view.Epoch, s.view.Master, s.view.Members, s.view.Synced, s.view.Mirrors)
	for _, nd := range s.nodes {
		if nd.role == nil {
			fmt.Fprintf(&b, "  %s down\n", nd.id)
			continue
		}
		fmt.Fprintf(&b, "  %s %v inc %d epoch %d broker %v side %d\n", nd.id, nd.role.State(), nd.role.Incarnation(), nd.role.Epoch(), nd.told, nd.side)
	}
	return b.String()
}

// settled: every node is a member on the latest view, the master serves
// and the others mirror. Without PromoteUnsynced a group may stay without
// a master (no survivor synced for a mirrored queue): then all mirror.
func (s *roleSim) settled() bool {
	v := s.view
	if len(v.Members) != s.cfg.n || v.Master == "" && s.cfg.promote {
		return false
	}
	for _, nd := range s.nodes {
		m, ok := v.Member(nd.id)
		if nd.role == nil || !ok || nd.role.Epoch() != v.Epoch || nd.role.Incarnation() != m.JoinEpoch {
			return false
		}
		want := RoleMirror
		if v.Master == nd.id {
			want = RoleMaster
		}
		if nd.role.State() != want {
			return false
		}
	}
	return true
}

func (s *roleSim) run() {
	for range s.cfg.steps {
		s.step(true)
		if s.failed {
			return
		}
	}
	// Heal everything; no more faults; every node in touch on every step.
	s.logf("quiesce")
	s.cfg.contact = 1
	for _, nd := range s.nodes {
		nd.side = 0
		if nd.role == nil {
			s.start(nd)
		}
		if nd.broker != BrokerOK {
			nd.broker = BrokerOK
			s.report(nd)
		}
	}
	for range 4000 {
		for _, nd := range s.nodes {
			if nd.role == nil { // a shutdown that completed meanwhile
				s.start(nd)
			}
		}
		s.step(false)
		if s.failed {
			return
		}
		if s.settled() {
			return
		}
	}
	s.fail("did not settle:\n%s", s.state())
}

func defaultRoleSimConf(rng *rand.Rand) roleSimConf {
	lease := 5 + rng.IntN(25)
	return roleSimConf{
		n:         3 + rng.IntN(3),
		steps:     400 + rng.IntN(400),
		lease:     lease,
		failure:   lease + 1 + rng.IntN(20),
		contact:   0.5 + 0.5*rng.Float64(),
		faults:    0.01 + 0.04*rng.Float64(),
		delay:     1 + rng.IntN(6),
		syncDelay: rng.IntN(100),
		promote:   rng.IntN(2) == 0,
		handover:  10 + rng.IntN(60),
		retry:     3 + rng.IntN(20),
	}
}

func TestRoleSim(t *testing.T) {
	seeds := 600
	if *simLong {
		seeds = 30000
	}
	if testing.Short() {
		seeds = 100
	}
	if *simSeeds > 0 {
		seeds = *simSeeds
	}
	if *simSeed != 0 {
		runRoleSeeds(t, *simSeed, 1)
		return
	}
	const shards = 4
	for sh := range shards {
		t.Run(fmt.Sprintf("shard%d", sh), func(t *testing.T) {
			t.Parallel()
			per := uint64((seeds + shards - 1) / shards)
			runRoleSeeds(t, *simFirst+uint64(sh)*per, per)
		})
	}
}

func runRoleSeeds(t *testing.T, first, n uint64) {
	for seed := first; seed < first+n; seed++ {
		s := newRoleSim(t, seed, defaultRoleSimConf(rand.New(rand.NewPCG(seed, 11))))
		s.run()
		if s.failed {
			return
		}
	}
}
