// Package admin is the sidecar's admin HTTP API: queue status and the
// policy verbs that `mirrorproxy ctl` calls.
//
// Endpoints (JSON):
//
//	GET    /api/queues?vhost=V          mirrored queues this node knows, with
//	                                    messages, slave_pids, synchronised_slave_pids, policy
//	GET    /api/policies[?vhost=V]      policies (RabbitMQ's definitions-export form)
//	PUT    /api/policies/{vhost}/{name} set a policy: {"pattern", "definition", "priority", "apply-to"}
//	DELETE /api/policies/{vhost}/{name} clear a policy
//
// The vhost in a path is escaped ("/" is %2F), as in RabbitMQ's HTTP API.
// Reads are open to whoever reaches the listener, which is loopback unless
// configured otherwise; changes need "Authorization: Bearer TOKEN" and are
// refused with 401 without it, and always when no token is configured
// (DESIGN invariant 7).
//
// Policies changed here are this node's only: group-wide agreement (raft)
// is the next step.
package admin
