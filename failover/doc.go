// Package failover keeps mirrorproxy's view — epoch, members in ring order
// with their join epochs, master, per-queue synced sets — in hashicorp/raft
// among the sidecars and any witnesses, detects failed members from
// heartbeats, and on the raft leader commits the next view (survivors in
// ring order; a new master elected as the synced member that applied the
// most, ties to the oldest).
//
//   - view.go: View, Member, Elect (pure).
//   - fsm.go: Command, Next (the pure view transition) and the raft FSM.
//   - role.go: Role, a node's role (joining, mirror, promoting, master,
//     fenced, stepping down, left) as a state machine returning actions.
//   - detect.go: Detector, a heartbeat failure detector as a pure state machine.
//   - lease.go: Lease, which a master checks to fence itself when cut off.
//   - stream.go: raft's StreamLayer over gm's authenticated handshake.
//   - views.go: Service, the raft wiring, join/leave and the leader's loop.
//
// See docs/views.md.
package failover
