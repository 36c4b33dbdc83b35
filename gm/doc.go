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
package gm
