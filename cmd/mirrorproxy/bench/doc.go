// Package bench is the `mirrorproxy bench` sub-command: it measures AMQP
// throughput and latency through several targets in one run and reports
// them as ratios.
//
// A target is an address an AMQP client dials to reach the same broker:
//
//	direct   the broker itself
//	hop      a bare TCP forwarder in this process (accept, dial the broker,
//	         two io.Copy goroutines) — the baseline the proxy is held to
//	hopbuf   the same forwarder copying through a user-space buffer (io.Copy
//	         between two TCP sockets uses splice(2) on Linux, hop does not
//	         touch the bytes; hopbuf does, like any proxy that parses frames)
//	proxy    the product, proxy.Server, served in this process
//	NAME     any external address given with --target NAME=HOST:PORT
//
// Three more targets have brokers of their own, three each, started with
// testenv for the run (the single broker stays the direct baseline):
//
//	mirrored      the product's mirrored group: 3 independent brokers and 3
//	              sidecars (package failover/group) in this process, a policy
//	              ha-mode all (automatic sync) on the bench queues; clients
//	              use the master's sidecar
//	rmq-mirrored  a RabbitMQ 3-node cluster with a classic mirrored queue
//	              (policy ha-mode all, ha-sync-mode automatic, checked at
//	              start); queues declared and clients connected on node 0
//	rmq-quorum    the same cluster with x-queue-type quorum queues
//
// For these the queue is declared, pre-filled, inspected and deleted, and the
// ping-pong producer publishes, at the target's own entry point (the master
// sidecar, or node 0), so a mirrored queue's copies see everything.
//
// Workloads, each against a fresh durable queue (classic; quorum for
// rmq-quorum) that is deleted afterwards:
//
//	publish  one producer in confirm mode with at most Window unconfirmed
//	         publishes; throughput and publish→confirm latency per message
//	consume  the queue is filled directly at the broker (not timed), then one
//	         consumer with basic.qos(Prefetch) drains it with one
//	         basic.ack(multiple=false) per message (throughput); then a
//	         ping-pong phase measures delivery latency: a producer connected
//	         directly to the broker (see above for the 3-node targets) publishes one message at a time and the
//	         consumer, connected through the target, times its arrival
//
// Every round runs every target for every workload, in an order that rotates
// from round to round (ABC, BCA, CAB, …), so slow drift of the shared machine
// falls on all targets alike. Warm-up rounds are discarded. Reported figures
// are medians over rounds; ratios and added latencies are medians of the
// per-round paired values.
//
// The load generator avoids per-message allocations of its own: one body
// buffer is reused, confirms arrive through NotifyPublish, and latency
// samples go into buffers allocated once.
package bench
