// Package chaos is the pure core of mirrorproxy's Jepsen-style chaos suite
// and the client workload that feeds it. A runner starts a group, runs the
// workload against every sidecar, injects faults, drains the queue, and
// hands the history to the checker.
//
//   - history.go: Event, MsgID, Clock and History, the run's record, safe
//     for many goroutines.
//   - check.go: Check, which walks a history (plus the final drain) and
//     counts lost, dropped and duplicate messages, unavailability windows
//     and order violations.
//   - result.go: Result, its Valid verdict, a text report and a Markdown
//     table row.
//   - workload.go, producer.go, consumer.go, drain.go: producers with
//     publisher confirms and consumers with manual acks on
//     rabbitmq/amqp091-go, reconnecting over a list of addresses and
//     recording what they see; Drain reads what is left.
//   - runner.go: Run, which carries out a Scenario against a Target: the
//     workload, a schedule of faults (kill -9, SIGSTOP, SIGTERM of the
//     master's or a mirror's broker, sidecar or both), each held, healed
//     and recovered from, then the drain and the check; a Report per run
//     and per fault.
//   - targets.go: the Targets on testenv groups: GroupTarget (a mirrorproxy
//     group) and ClusterTarget (the same brokers as one RabbitMQ cluster,
//     classic mirrored or quorum queues, for comparison).
//
// The checker never looks at a broker and has no timers: the same history
// always gives the same Result. See docs/CHAOS.md for what is counted and
// why.
package chaos
