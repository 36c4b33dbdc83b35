// Package compat is the client compatibility suite of the proxy: one
// scenario, run with several real AMQP 0-9-1 clients, once straight against
// a RabbitMQ broker and once through the proxy in front of the same broker.
// The package holds only tests (and their client scripts in testdata/).
//
// # Clients
//
//   - amqp091-go, the scenario written in Go (gowire_test.go);
//   - python3-pika, testdata/pika_scenario.py, run with Debian's
//     /usr/bin/python3 (package python3-pika);
//   - amqp-tools, testdata/amqp_tools.sh, the librabbitmq command-line
//     clients (package amqp-tools): the subset they can express.
//
// # Scenario
//
// Connections the broker refuses (wrong password: 403 or a closed socket,
// as the client's authentication_failure_close asks; missing vhost: 530),
// exchange, queue and binding declarations with arguments (alternate
// exchange, dead-letter exchange, priority, TTL), mismatched and passive
// declarations, a publish to a missing exchange and the channel errors they
// bring, reopening a channel number the broker closed, server-named queues,
// publisher confirms with a mandatory return and a nack (a full
// reject-publish queue), basic.get and get-empty, consumers with manual
// acks, nack with requeue (the message comes back redelivered), reject with
// and without requeue (dead-lettering through the DLX), basic.recover, a
// connection error (immediate=true: 540), basic.qos (prefetch 2 holds back
// the rest until an ack), a broker-side basic.cancel when a consumed queue
// is deleted, tx select/rollback/commit, 1 MiB and 5 MiB bodies split into
// many body frames (frame_max 131072), 200 channels on one connection, the
// negotiated heartbeat, frame_max and channel_max, an idle connection with
// a 1 s heartbeat that must stay alive, and connection.blocked /
// connection.unblocked during a memory alarm. Each client runs what it can
// express; amqp-tools a subset.
//
// # Transcripts
//
// Every run yields a transcript: the ordered, observable results of the
// scenario, one JSON object per line with a "step" key. Names a run creates
// start with a prefix unique to the run; before two transcripts are
// compared the prefix becomes "P", server-named queues "amq.gen-*" and
// server-made consumer tags "amq.ctag-*", and timestamps the broker adds
// (x-death "time") are "<time>". Each client runs three legs in turn:
// direct, direct again (two direct runs must agree, which proves the
// scenario deterministic and the normalisation complete), and through the
// proxy. Every difference between the direct and the proxy transcript is a
// test failure, shown as a line diff. Each leg also checks what the broker
// must do (a requeued message is redelivered, the prefetch window holds,
// bodies arrive byte-identical …) so that two equally wrong runs still
// fail.
//
// The suite needs a broker (testenv starts one; -short skips) and the
// Debian packages python3-pika and amqp-tools; without them the client's
// test fails and names the package to install. After the tests, no queue
// or exchange of a run may be left on the broker.
package compat
