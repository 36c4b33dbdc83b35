// Package admin is the sidecar's admin HTTP API: queue status, the policy
// verbs and the queue sync actions that `mirrorproxy ctl` calls.
//
// Endpoints (JSON):
//
//	GET    /api/nodes                   the group's members in ring order: name, master, join_epoch
//	GET    /api/queues?vhost=V          mirrored queues this node knows, with messages,
//	                                    slave_pids, synchronised_slave_pids, policy, syncing
//	GET    /api/policies[?vhost=V]      policies (RabbitMQ's definitions-export form)
//	PUT    /api/policies/{vhost}/{name} set a policy: {"pattern", "definition", "priority", "apply-to"}
//	DELETE /api/policies/{vhost}/{name} clear a policy
//	POST   /api/queues/{vhost}/{name}/actions
//	                                    {"action": "sync"}: synchronise the queue's unsynced
//	                                    mirrors, answering 204 when they are synced;
//	                                    {"action": "cancel_sync"}: stop a running sync
//
// The same listener serves /metrics, /healthz, /readyz, the status page
// and /api/status, /api/events: package ops, in front of this handler.
//
// The vhost in a path is escaped ("/" is %2F), as in RabbitMQ's HTTP API.
// Reads are open to whoever reaches the listener, which is loopback unless
// configured otherwise; changes and actions need "Authorization: Bearer
// TOKEN" and are refused with 401 without it, and always when no token is
// configured (DESIGN invariant 7).
//
// With a Changer (a group node), policy changes are group-wide: the master
// replicates them to every mirror, and a mirror answers 409 Conflict with
// a reason naming the master. Sync actions, too, are the master's: a mirror
// answers 409. An unknown policy or queue is 404. Without a Changer a
// policy change is this node's only.
//
// A sync request waits for the sync as long as its client does (the
// server's read and write timeouts do not cut it); the client going away
// or the server closing ends the wait, not the sync.
package admin
