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
//
// The checker never looks at a broker and has no timers: the same history
// always gives the same Result. See docs/CHAOS.md for what is counted and
// why.
package chaos
