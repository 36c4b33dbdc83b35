// Package group runs one node of a mirrored group inside a sidecar: it
// starts the node's gm ring member and raft voter (failover.Service) with its
// peers, installs every committed view in gm, and gives the node its role
// from the view.
//
// On the master, clients are served by a proxy.Server whose Replicator is a
// replicate.Master over the gm node: publishes, settles and topology become
// ops on the ring and confirms wait until every member applied them. On a
// mirror, every op gm delivers is applied to the local broker by a
// replicate.Mirror, and gm.Node.Applied is reported in op order as the
// mirror's done callbacks arrive, so an op becomes stable only when every
// mirror's broker holds it. Which queues a mirror holds is decided by the
// group's policies (replicate.Policies.Effective and replicate.Plan).
//
// Clients that connect to a mirror's sidecar are forwarded, as raw TCP, to
// the master sidecar's client address. This is interim: DESIGN.md's peer
// link (front on any sidecar, core on the master) replaces it.
//
// Not built yet: failover (a view whose master changes is logged, the role
// does not change), sync of new mirrors, synced sets in the view.
package group
