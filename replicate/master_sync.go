package replicate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// Errors of the master's queue administration.
var (
	// ErrUnknownQueue: the queue was not declared through this master.
	ErrUnknownQueue = errors.New("replicate: no such mirrored queue")
	// ErrNotSyncing: cancel_sync_queue on a queue with no sync running.
	ErrNotSyncing = errors.New("replicate: queue is not being synchronised")
	// ErrSyncCancelled: the sync was cancelled (cancel_sync_queue).
	ErrSyncCancelled = errors.New("replicate: sync cancelled")
	// ErrSyncFailed: a sync ended but some mirrors could not take it.
	ErrSyncFailed = errors.New("replicate: sync failed on a mirror")
	// ErrNoBroker: sync needs MasterConfig.BrokerURL.
	ErrNoBroker = errors.New("replicate: the master has no broker URL to sync from")
)

// QueueKey names a queue in the view's synced sets.
func QueueKey(vhost, name string) string { return vhost + "\x00" + name }

// QueueKeyText is a QueueKey for people: `"name" in vhost "vhost"`.
func QueueKeyText(key string) string {
	vhost, name, ok := strings.Cut(key, "\x00")
	if !ok {
		return fmt.Sprintf("%q", key)
	}
	return fmt.Sprintf("%q in vhost %q", name, vhost)
}

type qkey struct{ vhost, name string }

// syncState is the master's knowledge of which mirrors hold every message
// of each queue, and the syncs running. Guarded by Master.mu.
type syncState struct {
	members []Member
	synced  map[qkey]map[string]bool
	runs    map[qkey]*syncRun
	nextRun uint64
	notify  func(map[string][]string)
	// fresh is, per node, the incarnation (JoinEpoch) this master last
	// treated as a mirror from empty: one it saw join (SetMembers) or one
	// that reported so (Fresh). A report of that incarnation again is not
	// news: acting on it would cut short the sync the join started.
	fresh map[string]uint64
	// removals counts members taken out of a synced set; recorded is the
	// count the view (raft) is known to reflect (Recorded). While
	// recorded < removals, confirms wait (MasterConfig.HoldUnrecorded):
	// the view could still name as synced a mirror that lacks them.
	removals, recorded uint64
	recordedCh         chan struct{} // closed and replaced by Recorded
	holding            bool          // watchStable waits for a record
}

// unsync takes node out of set, counting the removal.
func (s *syncState) unsync(set map[string]bool, node string) {
	delete(set, node)
	s.removals++
}

type syncRun struct {
	id      uint64
	targets []string
	cancel  context.CancelFunc
	done    chan struct{}
	err     error
	lost    map[string]bool // targets that reported a failure during the run
	// copied and ready are the run's progress (SyncProgress): messages
	// sent to the ring, and the queue's ready count last asked.
	copied, ready atomic.Int64
}

func (s *syncState) init(members []Member) {
	s.members = slices.Clone(members)
	s.synced = map[qkey]map[string]bool{}
	s.runs = map[qkey]*syncRun{}
	s.fresh = map[string]uint64{}
	s.recordedCh = make(chan struct{})
}

func (s *syncState) forget(vhost, name string) {
	k := qkey{vhost, name}
	delete(s.synced, k)
	if r := s.runs[k]; r != nil {
		r.cancel()
	}
}

// planLocked is where the policies place a queue's mirrors now.
func (m *Master) planLocked(e *QueueEntry) []string {
	eff, ok := m.cfg.Policies.Effective(e.Vhost, e.Name, false, e.Arguments)
	if !ok {
		return nil
	}
	return Plan(eff, Group{Members: m.sy.members, Master: m.cfg.Self}, nil, nil).Mirrors
}

// queueDeclaredLocked starts the synced set of a new queue: every mirror
// placed now receives the queue's ops from its declare on.
func (m *Master) queueDeclaredLocked(e *QueueEntry) {
	set := map[string]bool{}
	for _, n := range m.planLocked(e) {
		set[n] = true
	}
	m.sy.synced[qkey{e.Vhost, e.Name}] = set
}

// SetMembers follows a new view. Members that were not in the last one
// (or come back as a new incarnation) are unsynced for every queue placed
// on them; they get the catalog's topology replayed so that they declare
// what exists, and queues with ha-sync-mode automatic start syncing.
func (m *Master) SetMembers(members []Member) {
	m.pol.Lock()
	m.mu.Lock()
	old := m.sy.members
	m.sy.members = slices.Clone(members)
	joined := false
	for _, n := range members {
		if !slices.Contains(old, n) {
			joined = true
			m.sy.fresh[n.Node] = n.JoinEpoch
		}
	}
	for _, e := range m.cat.all() {
		set := m.sy.synced[qkey{e.Vhost, e.Name}]
		plan := m.planLocked(e)
		for n := range set {
			if !slices.Contains(plan, n) || !slices.ContainsFunc(members, func(x Member) bool {
				return x.Node == n && slices.Contains(old, x)
			}) {
				m.sy.unsync(set, n)
			}
		}
	}
	var replay []*Op
	if joined {
		replay = m.replayLocked(nil)
	}
	m.mu.Unlock()
	m.proposeAll(replay)
	m.pol.Unlock()
	m.changed()
	m.autoSync()
}

// replayLocked returns Topology ops that declare the catalog (the queues
// keep selects, nil: all) on mirrors that lack it.
func (m *Master) replayLocked(keep func(vhost, queue string) bool) []*Op {
	var ops []*Op
	for vhost := range m.cat.vhosts {
		var k func(string) bool
		if keep != nil {
			k = func(q string) bool { return keep(vhost, q) }
		}
		for _, meth := range m.cat.replay(vhost, k) {
			ops = append(ops, &Op{Kind: OpTopology, Vhost: vhost, Method: meth})
		}
	}
	return ops
}

func (m *Master) proposeAll(ops []*Op) {
	for _, op := range ops {
		if _, err := m.propose(op); err != nil {
			m.log.Warn().Err(err).Str("op", op.Kind.String()).Msg("could not replicate an op")
			return
		}
	}
}

// SetPolicy sets a policy for the whole group: here, and on every mirror
// through the ring (in op order, so a mirror decides with the policy the
// master had). Queues that gain a mirror get it unsynced.
func (m *Master) SetPolicy(p Policy) error {
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return m.changePolicy(&Op{Kind: OpPolicy, Vhost: p.Vhost, Name: p.Name, Data: data}, func() error { return m.cfg.Policies.Set(p) })
}

// ClearPolicy clears a policy for the whole group.
func (m *Master) ClearPolicy(vhost, name string) error {
	return m.changePolicy(&Op{Kind: OpPolicy, Vhost: vhost, Name: name}, func() error { return m.cfg.Policies.Clear(vhost, name) })
}

func (m *Master) changePolicy(op *Op, apply func() error) error {
	prev, had := m.cfg.Policies.Get(op.Vhost, op.Name)
	old := func() (Policy, bool) { return prev, had }
	m.pol.Lock()
	m.mu.Lock()
	before := map[qkey][]string{}
	for _, e := range m.cat.all() {
		before[qkey{e.Vhost, e.Name}] = m.planLocked(e)
	}
	if err := apply(); err != nil {
		m.mu.Unlock()
		m.pol.Unlock()
		return err
	}
	gained := map[qkey]bool{}
	for _, e := range m.cat.all() {
		k := qkey{e.Vhost, e.Name}
		plan := m.planLocked(e)
		set := m.sy.synced[k]
		for n := range set {
			if !slices.Contains(plan, n) {
				m.sy.unsync(set, n)
			}
		}
		for _, n := range plan {
			if !slices.Contains(before[k], n) {
				gained[k] = true
			}
		}
	}
	ops := []*Op{op}
	if len(gained) > 0 {
		ops = append(ops, m.replayLocked(func(vhost, q string) bool { return gained[qkey{vhost, q}] })...)
	}
	m.mu.Unlock()
	_, err := m.propose(ops[0])
	if err == nil {
		m.proposeAll(ops[1:])
	} else {
		// The mirrors never got it: the master's set goes back too.
		if prev, had := old(); had {
			_ = m.cfg.Policies.Set(prev)
		} else {
			_ = m.cfg.Policies.Clear(op.Vhost, op.Name)
		}
	}
	m.pol.Unlock()
	m.changed()
	m.autoSync()
	return err
}

// ProposePolicies replicates the whole policy set (a new master's), so
// that every mirror decides with the same policies.
func (m *Master) ProposePolicies() error {
	m.pol.Lock()
	defer m.pol.Unlock()
	data, err := json.Marshal(m.cfg.Policies.List(""))
	if err != nil {
		return err
	}
	_, err = m.propose(&Op{Kind: OpPolicy, Data: data})
	return err
}

// MarkUnsynced takes node out of the synced sets of a queue ("" for every
// queue of vhost): a mirror reported it could not apply an op there.
func (m *Master) MarkUnsynced(node, vhost, queue string) {
	m.mu.Lock()
	for k, set := range m.sy.synced {
		if k.vhost == vhost && (queue == "" || k.name == queue) && set[node] {
			m.sy.unsync(set, node)
			m.log.Warn().Str("mirror", node).Str("vhost", vhost).Str("queue", k.name).Msg("mirror is no longer synced: it could not apply an op")
		}
	}
	for k, r := range m.sy.runs {
		if k.vhost == vhost && (queue == "" || k.name == queue) && slices.Contains(r.targets, node) {
			r.lost[node] = true
		}
	}
	m.mu.Unlock()
	m.changed()
}

// Fresh takes a mirror's report that it starts from empty while it stays
// a member (its broker's contents were a master's, or were lost): it is
// synced for nothing, and the catalog is declared again on the ring, so
// that its new mirror knows the queues (a mirror that knows a queue
// ignores a declare of it) and automatic syncs bring their messages.
// inc is the reporting incarnation (its JoinEpoch, the gm sender's): the
// report of an incarnation this master saw join is ignored, as the join
// did all of this already and a sync it started is running.
func (m *Master) Fresh(node string, inc uint64) {
	m.pol.Lock()
	m.mu.Lock()
	if m.sy.fresh[node] == inc {
		m.mu.Unlock()
		m.pol.Unlock()
		m.log.Debug().Str("mirror", node).Uint64("incarnation", inc).Msg("a mirror starts from empty: known since it joined")
		return
	}
	m.sy.fresh[node] = inc
	for k, set := range m.sy.synced {
		if set[node] {
			m.sy.unsync(set, node)
			m.log.Warn().Str("mirror", node).Str("vhost", k.vhost).Str("queue", k.name).Msg("mirror is no longer synced: it starts from empty")
		}
	}
	for _, r := range m.sy.runs {
		if slices.Contains(r.targets, node) {
			r.lost[node] = true
		}
	}
	replay := m.replayLocked(nil)
	m.mu.Unlock()
	m.proposeAll(replay)
	m.pol.Unlock()
	m.log.Info().Str("mirror", node).Int("declares", len(replay)).Msg("a mirror starts from empty: the catalog is declared to it again")
	m.changed()
	m.autoSync()
}

// Synced returns, sorted, the mirrors synced for a queue.
func (m *Master) Synced(vhost, queue string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return sortedSet(m.sy.synced[qkey{vhost, queue}])
}

// Syncing reports whether a sync of the queue is running.
func (m *Master) Syncing(vhost, queue string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sy.runs[qkey{vhost, queue}] != nil
}

// SyncedSets returns every queue's synced mirrors keyed by QueueKey, as
// the view stores them.
func (m *Master) SyncedSets() map[string][]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.syncedSetsLocked()
}

// Placement returns, per queue in the catalog (QueueKey), the members its
// policy places a mirror on now: the view records it beside the synced
// set, so an election asks "synced" only of queues that have mirrors.
func (m *Master) Placement() map[string][]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string][]string{}
	for _, e := range m.cat.all() {
		if plan := m.planLocked(e); len(plan) > 0 {
			out[QueueKey(e.Vhost, e.Name)] = slices.Sorted(slices.Values(plan))
		}
	}
	return out
}

func (m *Master) syncedSetsLocked() map[string][]string {
	out := make(map[string][]string, len(m.sy.synced))
	for k, set := range m.sy.synced {
		out[QueueKey(k.vhost, k.name)] = sortedSet(set)
	}
	return out
}

// OnSyncedChange registers fn to receive the synced sets after each change
// (outside the master's locks; calls may overlap). Set it before traffic.
func (m *Master) OnSyncedChange(fn func(map[string][]string)) {
	m.mu.Lock()
	m.sy.notify = fn
	m.mu.Unlock()
}

func (m *Master) changed() {
	m.mu.Lock()
	fn := m.sy.notify
	var sets map[string][]string
	if fn != nil {
		sets = m.syncedSetsLocked()
	}
	m.mu.Unlock()
	if fn != nil {
		fn(sets)
	}
}

func sortedSet(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// autoSync starts a sync of every queue with ha-sync-mode automatic that
// has unsynced mirrors and none running.
func (m *Master) autoSync() {
	if m.cfg.BrokerURL == "" {
		return
	}
	m.mu.Lock()
	var todo []*QueueEntry
	for _, e := range m.cat.all() {
		eff, ok := m.cfg.Policies.Effective(e.Vhost, e.Name, false, e.Arguments)
		if !ok || eff.SyncMode != SyncAutomatic || m.sy.runs[qkey{e.Vhost, e.Name}] != nil {
			continue
		}
		if len(m.unsyncedLocked(e)) > 0 {
			todo = append(todo, e)
		}
	}
	m.mu.Unlock()
	for _, e := range todo {
		if _, err := m.startSync(e.Vhost, e.Name); err != nil && !errors.Is(err, ErrStopped) {
			m.log.Warn().Err(err).Str("vhost", e.Vhost).Str("queue", e.Name).Msg("automatic sync did not start")
		}
	}
}

func (m *Master) unsyncedLocked(e *QueueEntry) []string {
	var out []string
	set := m.sy.synced[qkey{e.Vhost, e.Name}]
	for _, n := range m.planLocked(e) {
		if !set[n] {
			out = append(out, n)
		}
	}
	return out
}

// SyncQueue synchronises the queue's unsynced mirrors (rabbitmqctl
// sync_queue) and returns when they are synced, the sync failed or was
// cancelled, or ctx ends (the sync goes on). A queue whose mirrors are all
// synced returns at once. A sync already running is waited for.
func (m *Master) SyncQueue(ctx context.Context, vhost, name string) error {
	r, err := m.startSync(vhost, name)
	if err != nil || r == nil {
		return err
	}
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// CancelSync stops a running sync (rabbitmqctl cancel_sync_queue); its
// mirrors stay unsynced.
func (m *Master) CancelSync(vhost, name string) error {
	m.mu.Lock()
	r := m.sy.runs[qkey{vhost, name}]
	m.mu.Unlock()
	if r == nil {
		if _, ok := m.Queue(vhost, name); !ok {
			return fmt.Errorf("%w: %q in vhost %q", ErrUnknownQueue, name, vhost)
		}
		return fmt.Errorf("%w: %q in vhost %q", ErrNotSyncing, name, vhost)
	}
	r.cancel()
	<-r.done
	return nil
}

// startSync starts (or finds) the sync run of a queue; nil when every
// mirror is synced.
func (m *Master) startSync(vhost, name string) (*syncRun, error) {
	if m.cfg.BrokerURL == "" {
		return nil, ErrNoBroker
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx.Err() != nil {
		return nil, ErrStopped
	}
	e := m.cat.queue(vhost, name)
	if e == nil {
		return nil, fmt.Errorf("%w: %q in vhost %q", ErrUnknownQueue, name, vhost)
	}
	k := qkey{vhost, name}
	if r := m.sy.runs[k]; r != nil {
		return r, nil
	}
	targets := m.unsyncedLocked(e)
	if len(targets) == 0 {
		return nil, nil
	}
	batch := DefaultSyncBatchSize
	if eff, ok := m.cfg.Policies.Effective(vhost, name, false, e.Arguments); ok && eff.SyncBatchSize > 0 {
		batch = eff.SyncBatchSize
	}
	m.sy.nextRun++
	ctx, cancel := context.WithCancel(m.ctx)
	r := &syncRun{id: m.sy.nextRun, targets: targets, cancel: cancel, done: make(chan struct{}), lost: map[string]bool{}}
	m.sy.runs[k] = r
	entry := *e
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		defer cancel()
		r.err = m.runSync(ctx, r, &entry, batch)
		m.mu.Lock()
		delete(m.sy.runs, k)
		m.mu.Unlock()
		close(r.done)
		m.changed()
		if r.err == nil {
			// Mirrors placed while this run copied (a member that joined)
			// were not among its targets.
			m.autoSync()
		}
	}()
	return r, nil
}

// syncMsg is one message read from the master's queue.
type syncMsg struct{ header, body []byte }

// runSync copies the master's queue to the run's targets (docs/REPLICATION.md,
// "Sync"): a consumer with the highest priority and no prefetch limit takes
// every ready message — which blocks the queue for the clients' consumers,
// as RabbitMQ's sync did — each goes to the ring as a SyncCopy op, and
// closing the consumer's channel at the end puts them all back, in order.
func (m *Master) runSync(ctx context.Context, r *syncRun, e *QueueEntry, batch int) (err error) {
	log := m.log.With().Str("vhost", e.Vhost).Str("queue", e.Name).Uint64("sync", r.id).Strs("mirrors", r.targets).Logger()
	start := time.Now()
	log.Info().Int("batch", batch).Msg("sync started")
	conn, err := dialBroker(ctx, m.cfg.BrokerURL, e.Vhost, log)
	if err != nil {
		return fmt.Errorf("replicate: sync of queue %q: %w", e.Name, err)
	}
	defer conn.close()
	msgs := make(chan syncMsg, min(batch, 1024))
	budget := newByteBudget(readBudget)
	ch, err := conn.openChannel(ctx, chanHandlers{
		keepBody: true,
		deliver: func(_ *amqp.BasicDeliver, header, body []byte) {
			if !budget.acquire(ctx, len(header)+len(body)) {
				return
			}
			select {
			case msgs <- syncMsg{slices.Clone(header), slices.Clone(body)}:
			case <-ctx.Done():
			}
		},
	})
	if err != nil {
		return fmt.Errorf("replicate: sync of queue %q: %w", e.Name, err)
	}
	// The queue's declare and bindings again first: a target whose
	// declare failed before (a lost connection since restored) gets
	// another chance to hold a copy; for the others it changes nothing.
	m.mu.Lock()
	var replay []*Op
	for _, meth := range m.cat.replay(e.Vhost, func(q string) bool { return q == e.Name }) {
		replay = append(replay, &Op{Kind: OpTopology, Vhost: e.Vhost, Method: meth})
	}
	m.mu.Unlock()
	m.proposeAll(replay)
	if _, err := m.propose(&Op{Kind: OpSyncStart, Vhost: e.Vhost, Queue: e.Name, ID: r.id, Nodes: r.targets}); err != nil {
		return err
	}
	copied := 0
	defer func() {
		// Closing the channel requeues every message read, in order; the
		// end op goes to the ring either way.
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = ch.close(cctx)
		cancel()
		cancelled := err != nil
		seq, perr := m.propose(&Op{Kind: OpSyncEnd, Vhost: e.Vhost, Queue: e.Name, ID: r.id, Cancelled: cancelled})
		if err == nil && perr == nil {
			perr = m.ring.WaitStable(m.ctx, uint64(seq))
		}
		if err == nil && perr != nil {
			err = perr
		}
		if ctx.Err() != nil && m.ctx.Err() == nil {
			err = ErrSyncCancelled
		}
		if err != nil {
			log.Warn().Err(err).Int("copied", copied).Msg("sync did not finish: the mirrors stay unsynced")
			return
		}
		m.mu.Lock()
		var synced, failed []string
		if set := m.sy.synced[qkey{e.Vhost, e.Name}]; set != nil {
			for _, n := range r.targets {
				switch {
				case r.lost[n]:
					failed = append(failed, n)
				case slices.ContainsFunc(m.sy.members, func(x Member) bool { return x.Node == n }):
					set[n] = true
					synced = append(synced, n)
				}
			}
		}
		m.mu.Unlock()
		log.Info().Int("copied", copied).Dur("took", time.Since(start)).Strs("synced", synced).Strs("failed", failed).Msg("sync finished")
		if len(failed) > 0 {
			err = fmt.Errorf("%w: %s could not take the copies of queue %q (see their logs); they stay unsynced",
				ErrSyncFailed, strings.Join(failed, ", "), e.Name)
		}
	}()
	if _, err := ch.rpc(ctx, &amqp.BasicQos{}); err != nil {
		return err
	}
	if e.AutoDelete {
		// The sync consumer would be the queue's last one: when it goes,
		// the broker deletes the queue and its messages.
		ok, err := ch.rpc(ctx, &amqp.QueueDeclare{Queue: e.Name, Passive: true})
		if err != nil {
			return fmt.Errorf("replicate: sync of queue %q: %w", e.Name, err)
		}
		if ok.(*amqp.QueueDeclareOk).ConsumerCount == 0 {
			return fmt.Errorf("replicate: sync of auto-delete queue %q refused: it has no consumer, and the sync's own consumer leaving would make the broker delete it", e.Name)
		}
	}
	if _, err := ch.rpc(ctx, &amqp.BasicConsume{Queue: e.Name, ConsumerTag: "mirrorproxy-sync",
		Arguments: amqp.Table{{Key: "x-priority", Value: int32(math.MaxInt32)}}}); err != nil {
		return fmt.Errorf("replicate: sync of queue %q: %w", e.Name, err)
	}
	var last uint64
	sinceWait := 0
	propose := func(s syncMsg) error {
		seq, err := m.propose(&Op{Kind: OpSyncCopy, Vhost: e.Vhost, Queue: e.Name, Header: s.header, Body: s.body})
		budget.release(len(s.header) + len(s.body)) // the op holds its own copy
		if err != nil {
			return err
		}
		copied++
		r.copied.Store(int64(copied))
		last = uint64(seq)
		if sinceWait++; sinceWait >= batch {
			// One batch in flight at a time: the ring's window bounds
			// memory anyway; this paces the sync against the mirrors.
			sinceWait = 0
			return m.ring.WaitStable(ctx, last)
		}
		return nil
	}
	// The queue has been read when the broker counts no ready message
	// (askReady) and what is buffered then has gone to the ring.
	var asked <-chan readyCount
	var unacked map[uint64]bool // delivered to clients when the read began
	var retry <-chan time.Time  // paces the question while waiting for them
	for {
		if asked == nil && retry == nil && len(msgs) == 0 {
			asked = askReady(ctx, ch, e.Name)
		}
		select {
		case s := <-msgs:
			if err := propose(s); err != nil {
				return err
			}
		case <-retry:
			retry = nil
		case c := <-asked:
			asked = nil
			if c.err == nil {
				r.ready.Store(int64(c.ready))
			}
			if c.err != nil {
				return fmt.Errorf("replicate: sync of queue %q: %w", e.Name, c.err)
			}
			if unacked == nil {
				unacked = map[uint64]bool{}
				if m.cfg.Outstanding != nil {
					for _, id := range m.cfg.Outstanding(e.Vhost, e.Name) {
						unacked[id] = true
					}
				}
				if len(unacked) > 0 {
					log.Info().Int("unacked", len(unacked)).Msg("sync waits for messages that clients hold unacked: they must be acked or come back to the queue")
				}
			}
			if c.ready != 0 {
				continue
			}
			for len(msgs) > 0 {
				if err := propose(<-msgs); err != nil {
					return err
				}
			}
			if len(unacked) > 0 {
				now := map[uint64]bool{}
				for _, id := range m.cfg.Outstanding(e.Vhost, e.Name) {
					now[id] = true
				}
				for id := range unacked {
					if !now[id] {
						delete(unacked, id)
					}
				}
			}
			if len(unacked) == 0 {
				return nil
			}
			retry = time.After(20 * time.Millisecond)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// readyCount is a queue's ready message count, or why it could not be read.
type readyCount struct {
	ready uint32
	err   error
}

// askReady asks, with a passive queue.declare on ch, how many messages of
// queue are ready, and answers on the returned channel. The answer comes
// after every delivery the broker sent on ch before it, so a reader that
// drains its deliveries while it waits knows, on 0, that it has read the
// queue. Asked from its own goroutine, so the reader never blocks the
// connection's reader goroutine by waiting (sync and rotation both read a
// whole queue this way).
//
// One declare-ok is not enough for that: RabbitMQ's channel process
// answers the declare from inside its call to the queue process, and the
// deliveries the queue process sent it just before that reply still wait
// in its mailbox — the declare-ok with 0 ready can overtake the last
// deliveries. A sync that stopped there left a mirror it then called
// synced without them (TestDemo saw a copy of 483 messages of 500). So a
// 0 is asked again: the channel handles the second declare after those
// deliveries, and its answer comes behind them.
func askReady(ctx context.Context, ch *brokerChan, queue string) <-chan readyCount {
	c := make(chan readyCount, 1)
	go func() {
		ask := func() (uint32, error) {
			ok, err := ch.rpc(ctx, &amqp.QueueDeclare{Queue: queue, Passive: true})
			if err != nil {
				return 0, err
			}
			return ok.(*amqp.QueueDeclareOk).MessageCount, nil
		}
		n, err := ask()
		if err == nil && n == 0 {
			n, err = ask()
		}
		c <- readyCount{ready: n, err: err}
	}()
	return c
}

// Unrecorded returns the count of removals from the synced sets so far:
// once the view reflects the synced sets read after this call, pass it to
// Recorded.
func (m *Master) Unrecorded() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sy.removals
}

// Recorded tells the master that the view reflects every removal from the
// synced sets up to gen (Unrecorded): confirms held for them go out.
func (m *Master) Recorded(gen uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if gen > m.sy.recorded {
		m.sy.recorded = gen
		close(m.sy.recordedCh)
		m.sy.recordedCh = make(chan struct{})
	}
}

// Holding reports whether confirms wait for the view to record a mirror's
// removal from a synced set.
func (m *Master) Holding() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sy.holding
}

// waitRecorded blocks, with HoldUnrecorded, until the view reflects every
// removal from the synced sets made so far. It reports false when the
// master stops.
func (m *Master) waitRecorded() bool {
	if !m.cfg.HoldUnrecorded {
		return true
	}
	var since time.Time
	for {
		m.mu.Lock()
		if m.sy.recorded >= m.sy.removals {
			m.sy.holding = false
			m.mu.Unlock()
			return true
		}
		m.sy.holding = true
		ch := m.sy.recordedCh
		m.mu.Unlock()
		if since.IsZero() {
			since = time.Now()
		}
		select {
		case <-ch:
		case <-m.ctx.Done():
			return false
		case <-time.After(time.Second):
			m.log.Warn().Dur("waited", time.Since(since)).
				Msg("confirms wait until the view records that a mirror is no longer synced")
		}
	}
}
