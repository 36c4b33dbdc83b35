// Package ops serves what an operator watches on a sidecar's admin
// listener, beside the admin API:
//
//	GET /metrics      Prometheus text format (docs/METRICS.md)
//	GET /healthz      liveness: 200 while the process's main loops answer
//	GET /readyz       readiness: 200 while this sidecar can serve clients
//	GET /             the live status page (HTML and a little script)
//	GET /api/status   the node's state as JSON (what the page shows)
//	GET /api/events   the node's recent view changes and failovers
//
// None needs the admin token: they change nothing. A node of a group
// serves them from its group.Group; a plain sidecar (no group) from its
// proxy server alone, when admin.address is configured.
//
// The probes answer a short text body, one reason per line, or JSON with
// "Accept: application/json" or ?format=json.
package ops
