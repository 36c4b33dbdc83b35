package ops

import (
	"context"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/failover"
	"github.com/mirrorproxy/mirrorproxy/failover/group"
	"github.com/mirrorproxy/mirrorproxy/gm"
	"github.com/mirrorproxy/mirrorproxy/proxy"
)

// Metric names follow rabbitmq_prometheus: a prefix, snake case, _total for
// counters, base units (seconds, bytes) in the name. docs/METRICS.md lists
// each with its type, labels and meaning; TestMetricsDocumented keeps the
// two in step.
const ns = "mirrorproxy_"

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(ns+name, help, labels, nil)
}

// The front: client sessions and what they carried.
var (
	dSessions       = desc("client_sessions", "Client sessions open now, by origin: client (accepted on this sidecar's AMQP listener) or peer (a session another sidecar's front carries to this master's core).", "origin")
	dSessionsOpened = desc("client_sessions_opened_total", "Client sessions opened since the sidecar started, by origin.", "origin")
	dFrames         = desc("frames_total", "AMQP frames the sessions carried, by origin and direction (from_client: towards the broker; to_client: from the broker).", "origin", "direction")
	dBytes          = desc("bytes_total", "Bytes of the AMQP frames the sessions carried, by origin and direction.", "origin", "direction")
	dBadInput       = desc("client_sessions_closed_bad_input_total", "Client sessions closed for bad input, by the AMQP reply code they were closed with, or protocol_header, proxy_header, handshake.", "code")
	dWithheld       = desc("confirms_withheld", "Publisher confirms the master's broker gave that wait, now, for the ring to report their ops stable.")
	dMoved          = desc("sessions_moved_total", "Client sessions moved to a new master's broker without closing the client's connection (raft.move_sessions).")
	dCancels        = desc("consumer_cancels_sent_total", "basic.cancel sent to x-cancel-on-ha-failover consumers when their session moved.")
	dResent         = desc("publishes_resent_total", "Unconfirmed publishes re-sent to the new master when a session moved.")
	dDeduplicated   = desc("publishes_deduplicated_total", "Re-sent publishes this node dropped (and confirmed) because it had stored them already.")
)

// The ring.
var (
	dProposed  = desc("ring_ops_proposed_total", "Ops this node proposed to the gm ring.")
	dStable    = desc("ring_ops_stable_total", "Ops of this node that became stable (applied by every member).")
	dLatency   = desc("ring_propose_to_stable_seconds", "Time from proposing an op to the ring until it is stable.")
	dInFlight  = desc("ring_window_ops", "This node's ops proposed and not yet stable (the window's occupancy).")
	dWindow    = desc("ring_window_size_ops", "The bound on ring_window_ops (gm.window): proposals wait beyond it.")
	dRingHeld  = desc("ring_ops_held", "Ops (every member's streams) this node buffers until they are stable.")
	dLagOps    = desc("member_lag_ops", "On the master: ops of its stream the member has not applied yet.", "member")
	dLagSecs   = desc("member_lag_seconds", "On the master: age of the oldest op of its stream the member has not applied (0 when none).", "member")
	dHeardSecs = desc("member_last_heard_seconds", "Seconds since this node last heard the member's sidecar on the ring.", "member")
)

// Mirrored queues.
var (
	dQMessages   = desc("queue_messages", "On the master: the mirrored queue's ready messages in the master's broker.", "vhost", "queue")
	dQHeld       = desc("queue_mirror_messages", "On a mirror: the copies of the queue's messages its broker holds.", "vhost", "queue", "mirror")
	dQMirrors    = desc("queue_mirrors", "Members the queue's policy places a mirror on.", "vhost", "queue")
	dQSynced     = desc("queue_mirror_synced", "1 when the mirror holds every message of the queue (the view's synced set), else 0.", "vhost", "queue", "mirror")
	dQLagOps     = desc("queue_mirror_lag_ops", "On the master: ops the mirror has not applied yet (one stream carries every queue, so a mirror's lag is the same for each of its queues).", "vhost", "queue", "mirror")
	dQLagSecs    = desc("queue_mirror_lag_seconds", "On the master: age of the oldest op the mirror has not applied.", "vhost", "queue", "mirror")
	dQSyncing    = desc("queue_syncing", "On the master: 1 while a sync of the queue runs.", "vhost", "queue")
	dQSyncRatio  = desc("queue_sync_progress_ratio", "On the master: the running sync's share of the queue copied, 0 to 1 (0 when none runs).", "vhost", "queue")
	dQSyncCopied = desc("queue_sync_messages_copied", "On the master: messages the running sync copied so far.", "vhost", "queue")
)

// The view, raft and failover.
var (
	dEpoch         = desc("view_epoch", "Epoch of the latest view this node applied.")
	dMembers       = desc("view_members", "Members in the latest view.")
	dUnsynced      = desc("view_master_unsynced_queues", "Mirrored queues the master was not synced for when it was elected (ha-promote-on-failure: always): their confirmed messages that only the departed master held may be lost.")
	dMaster        = desc("view_master", "1 for the member the latest view names master (none while the group has no master).", "master")
	dRole          = desc("role", "1 for this node's role, 0 for the others: joining, mirror, promoting, master, fenced, stepping-down, left.", "role")
	dServing       = desc("serving", "1 while this node's core serves clients as the master.")
	dBroker        = desc("broker_up", "1 while the local broker answers the sidecar's probe.")
	dRaftLeader    = desc("raft_leader", "1 for the voter this node knows as raft leader.", "leader")
	dRaftIsLeader  = desc("raft_is_leader", "1 when this node is the raft leader.")
	dRaftTerm      = desc("raft_term", "The current raft term.")
	dLease         = desc("raft_lease_held", "1 while this node heard from a raft majority recently (a master serves only then).")
	dPromotions    = desc("promotions_total", "Times this node's role became master (the first master at bootstrap included).")
	dMasterChanges = desc("view_master_changes_total", "Views applied that named another master than the view before (failovers and handovers).")
	dFences        = desc("fences_total", "Times this node, as master, stopped serving because its lease lapsed.")
	dMasterless    = desc("masterless_seconds_total", "Seconds the views named no master since this node started (after the group first had one).")
	dMasterlessNow = desc("masterless_seconds", "Seconds since the views have named no master (0 while one is named).")
	dUp            = desc("build_info", "1, with the sidecar's version and whether it runs in a group.", "version", "grouped")
)

// roles lists the role label's values, in failover.RoleState order.
var roles = []string{"joining", "mirror", "promoting", "master", "fenced", "stepping-down", "left"}

// collector reads a sidecar's state at scrape time: nothing is counted
// twice and nothing runs between scrapes.
type collector struct {
	version string
	// node reads a group node's state (nil on a plain sidecar); front the
	// proxy server's counters (false when there is no server yet).
	node     func(ctx context.Context) (group.Status, error)
	front    func() (proxy.Stats, bool)
	messages func(ctx context.Context, queues []QueueRef) map[QueueRef]int
	log      zerolog.Logger
}

// newCollector reads the sidecar cfg describes.
func newCollector(cfg *Config) collector {
	c := collector{version: cfg.Version, messages: cfg.Messages, log: cfg.Logger,
		front: func() (proxy.Stats, bool) { return proxy.Stats{}, false }}
	if g := cfg.Group; g != nil {
		c.node, c.front = g.Status, g.FrontStats
	} else if srv := cfg.Front; srv != nil {
		c.front = func() (proxy.Stats, bool) { return srv.Stats(), true }
	}
	return c
}

var allDescs = []*prometheus.Desc{
	dSessions, dSessionsOpened, dFrames, dBytes, dBadInput, dWithheld, dMoved, dCancels, dResent, dDeduplicated,
	dProposed, dStable, dLatency, dInFlight, dWindow, dRingHeld, dLagOps, dLagSecs, dHeardSecs,
	dQMessages, dQHeld, dQMirrors, dQSynced, dQLagOps, dQLagSecs, dQSyncing, dQSyncRatio, dQSyncCopied,
	dEpoch, dMembers, dUnsynced, dMaster, dRole, dServing, dBroker, dRaftLeader, dRaftIsLeader, dRaftTerm, dLease,
	dPromotions, dMasterChanges, dFences, dMasterless, dMasterlessNow, dUp,
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// scrapeTimeout bounds one scrape's reads (the ring's goroutine, the
// master's broker for queue_messages).
const scrapeTimeout = 5 * time.Second

func (c collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(dUp, 1, c.version, strconv.FormatBool(c.node != nil))
	if c.node == nil {
		if fs, ok := c.front(); ok {
			collectFront(fs, gauge, counter)
		}
		return
	}
	st, err := c.node(ctx)
	if err != nil {
		c.log.Warn().Err(err).Msg("metrics: the node's status could not be read; only the front's metrics are served")
		if fs, ok := c.front(); ok {
			collectFront(fs, gauge, counter)
		}
		return
	}
	collectFront(st.Front, gauge, counter)
	collectRing(st.RingStats, ch, gauge, counter)
	for _, m := range st.Members {
		if m.Self {
			continue
		}
		if m.HeardAgo >= 0 {
			gauge(dHeardSecs, m.HeardAgo, m.ID)
		}
		if st.Serving {
			gauge(dLagOps, float64(m.LagOps), m.ID)
			gauge(dLagSecs, m.LagSeconds, m.ID)
		}
	}
	lag := map[string]group.MemberStatus{}
	for _, m := range st.Members {
		lag[m.ID] = m
	}
	var counts map[QueueRef]int
	if st.Serving && c.messages != nil && len(st.Queues) > 0 {
		refs := make([]QueueRef, 0, len(st.Queues))
		for _, q := range st.Queues {
			refs = append(refs, QueueRef{q.Vhost, q.Name})
		}
		counts = c.messages(ctx, refs)
	}
	for _, q := range st.Queues {
		gauge(dQMirrors, float64(len(q.Mirrors)), q.Vhost, q.Name)
		for _, m := range q.Mirrors {
			synced := 0.0
			if slices.Contains(q.Synced, m) {
				synced = 1
			}
			gauge(dQSynced, synced, q.Vhost, q.Name, m)
			if st.Serving {
				gauge(dQLagOps, float64(lag[m].LagOps), q.Vhost, q.Name, m)
				gauge(dQLagSecs, lag[m].LagSeconds, q.Vhost, q.Name, m)
			}
		}
		if q.Held != nil {
			gauge(dQHeld, float64(*q.Held), q.Vhost, q.Name, st.Node)
		}
		if st.Serving {
			syncing := 0.0
			if q.Syncing {
				syncing = 1
			}
			gauge(dQSyncing, syncing, q.Vhost, q.Name)
			gauge(dQSyncRatio, q.SyncProgress, q.Vhost, q.Name)
			gauge(dQSyncCopied, float64(q.SyncCopied), q.Vhost, q.Name)
			if n, ok := counts[QueueRef{q.Vhost, q.Name}]; ok {
				gauge(dQMessages, float64(n), q.Vhost, q.Name)
			}
		}
	}
	gauge(dEpoch, float64(st.Epoch))
	gauge(dMembers, float64(len(st.Members)))
	gauge(dUnsynced, float64(len(st.MasterUnsynced)))
	if st.Master != "" {
		gauge(dMaster, 1, st.Master)
	}
	for _, r := range roles {
		v := 0.0
		if r == st.Role {
			v = 1
		}
		gauge(dRole, v, r)
	}
	gauge(dServing, b2f(st.Serving))
	gauge(dBroker, b2f(st.Broker == failover.BrokerOK.String()))
	if st.Raft.Leader != "" {
		gauge(dRaftLeader, 1, st.Raft.Leader)
	}
	gauge(dRaftIsLeader, b2f(st.Raft.Leader == st.Node))
	gauge(dRaftTerm, float64(st.Raft.Term))
	gauge(dLease, b2f(st.Raft.LeaseHeld))
	counter(dPromotions, float64(st.Promotions))
	counter(dMasterChanges, float64(st.MasterChanges))
	counter(dFences, float64(st.Fences))
	counter(dMasterless, st.MasterlessSeconds)
	gauge(dMasterlessNow, st.MasterlessNow)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func collectFront(s proxy.Stats, gauge, counter func(*prometheus.Desc, float64, ...string)) {
	for _, o := range []struct {
		origin string
		open   int64
		total  uint64
		tr     proxy.Traffic
	}{{"client", s.ClientsOpen, s.ClientsTotal, s.ClientTraffic}, {"peer", s.LegsOpen, s.LegsTotal, s.LegTraffic}} {
		gauge(dSessions, float64(o.open), o.origin)
		counter(dSessionsOpened, float64(o.total), o.origin)
		counter(dFrames, float64(o.tr.FramesFromClient), o.origin, "from_client")
		counter(dFrames, float64(o.tr.FramesToClient), o.origin, "to_client")
		counter(dBytes, float64(o.tr.BytesFromClient), o.origin, "from_client")
		counter(dBytes, float64(o.tr.BytesToClient), o.origin, "to_client")
	}
	for code, n := range s.BadInput {
		counter(dBadInput, float64(n), code)
	}
	gauge(dWithheld, float64(s.ConfirmsWithheld))
	counter(dMoved, float64(s.Moved))
	counter(dCancels, float64(s.Cancels))
	counter(dResent, float64(s.Resent))
	counter(dDeduplicated, float64(s.Deduplicated))
}

func collectRing(rs gm.Stats, ch chan<- prometheus.Metric, gauge, counter func(*prometheus.Desc, float64, ...string)) {
	counter(dProposed, float64(rs.Proposed))
	counter(dStable, float64(rs.Stable))
	gauge(dInFlight, float64(rs.InFlight))
	gauge(dWindow, float64(rs.Window))
	gauge(dRingHeld, float64(rs.Held))
	buckets := make(map[float64]uint64, len(gm.LatencyBuckets))
	var cum uint64
	for i, le := range gm.LatencyBuckets {
		cum += rs.Latency.Counts[i]
		buckets[le] = cum
	}
	ch <- prometheus.MustNewConstHistogram(dLatency, rs.Latency.Count, rs.Latency.Sum, buckets)
}

// newRegistry is the sidecar's own registry (not the process-wide
// default): the collector above, and Go's and the process's own metrics.
func newRegistry(cfg *Config) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(cfg),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}
