// Package gm is guaranteed multicast for mirrorproxy: a ring of members that
// delivers every op to every live member in its sender's order, exactly once,
// and tells the sender when an op is stable (every member of the view has
// durably applied it). gm knows nothing of AMQP or queues: an op is opaque
// bytes with a sender and a sequence number.
//
// The protocol is described in docs/gm.md. The layers are:
//
//   - msg.go: messages and their binary encoding (pure functions).
//   - ring.go: Ring, the protocol as a deterministic state machine with no
//     clock and no I/O (Step, Tick, Propose, Applied, InstallView, Ready).
//   - auth.go: the peer handshake (HMAC-SHA256 challenge–response, optional
//     mutual TLS), shared with failover's raft stream layer.
//   - transport.go, node.go: Node, the I/O driver: length-prefixed frames
//     on TCP, one writer per peer with a bounded queue, batched flushes.
//
// In short: members form a ring in view order; an op goes from its sender
// round the ring, each member delivering it (in per-sender order, once) and
// passing it on; members gossip "applied up to" facts on every message, and
// an op is stable when every member of the view has applied it. On a view
// change each member re-sends its unstable ops to its new successor, which
// drops duplicates by sequence number.
//
//	A ──data──▶ B ──data──▶ C        data: ops + link start + facts
//	A ◀──ack─── B ◀──ack─── C        ack: delivered per stream + facts
package gm
