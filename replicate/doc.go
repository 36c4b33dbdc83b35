// Package replicate gives mirrorproxy RabbitMQ's classic mirrored queues:
// policies (which queues are mirrored, where, and how they sync and
// promote); turning the frames the core intercepts into ops; applying ops
// on mirrors (shadow consumers on each mirror's broker); sync of new
// mirrors; queue status (slave_pids, synchronised_slave_pids).
//
// Built so far (docs/REPLICATION.md has the contract and the status):
//
//   - op.go: the op format carried by the gm ring (publish, ack, drop,
//     topology, queue-gone), versioned and length-checked.
//   - master.go: Master, the proxy.Replicator of the master's sidecar: the
//     core's publishes, settles and topology changes become ops on the ring,
//     and the ring's stable point releases the clients' confirms.
//   - mirror*.go: Mirror, which applies ops in order to a mirror's broker
//     and holds the copies there with shadow consumers.
//
// Policies, in policy.go, are pure Go with no I/O:
//
//   - Definition: a policy definition parsed from JSON (as set_policy takes
//     it) or from a YAML-decoded map, with RabbitMQ 3.10's validation of the
//     ha-* keys; other keys pass through untouched for the broker.
//   - Policy, Spec, Policies: the policies of a group; Match and Effective
//     pick the policy in force for a queue (highest priority, ties to the
//     name that sorts last), never mirror exclusive queues, and fall back
//     to legacy x-ha-policy queue arguments (LegacyHA).
//   - Plan: the mirror set of a queue in a group for its mode (all, exactly,
//     nodes), and the mirrors added and removed since its current set.
//
// The rules, the defaults and where they differ from RabbitMQ are in
// docs/POLICIES.md.
package replicate
