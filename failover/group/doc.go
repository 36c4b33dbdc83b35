// Package group runs one node of a mirrored group inside a sidecar: it
// starts the node's gm ring member and raft voter (failover.Service) with its
// peers, installs every committed view in gm, and gives the node its role
// from the view.
//
// On the master, clients are served by a proxy.Server whose Replicator is a
// replicate.Master over the gm node: publishes, settles and topology become
// ops on the ring and confirms wait until every member applied them. On a
// mirror, every op gm delivers goes to a replicate.Follower, which applies
// it to the local broker through a replicate.Mirror and reports
// gm.Node.Applied in op order as the mirror's done callbacks arrive (and a
// failed op to the master as a status op first), so an op becomes stable
// only when every mirror's broker holds it. Which queues a mirror holds is decided by the
// group's policies (replicate.Policies.Effective and replicate.Plan).
//
// Every node serves clients with a proxy.Server, its front: on the master
// the session's leg goes to the local broker (the core, in process); on a
// mirror it goes over the peer link (failover/peerlink: one authenticated,
// yamux-multiplexed connection per pair of sidecars, on the ring's port)
// to the master's sidecar, whose server serves it as a client carrying the
// client's own address. The mirror's front keeps the client's connection
// and the session's replayable state, so a failover can move the leg.
//
// Not built yet: failover (a view whose master changes is logged, the role
// does not change), sync of new mirrors, synced sets in the view.
package group
