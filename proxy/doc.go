// Package proxy is mirrorproxy's client-facing side: it accepts AMQP 0-9-1
// clients and carries each session to a broker, invisibly.
//
// A session has two halves (DESIGN §4). The front keeps the client's
// connection and the state needed to move the session elsewhere
// (sessionState: credentials, vhost, tune values, channels, qos,
// confirm/tx mode, consumers, delivery-tag and publish-sequence maps,
// unconfirmed publishes). The core holds the upstream broker connection,
// made with the client's own credentials so the broker authenticates and
// authorises the client. Today the core is in process and its upstream is the
// one configured broker; failover will move sessions between cores.
//
//	client ──▶ front: amqp.Reader ─ sessionState.fromClient ─▶ out(upstream) ──▶ broker
//	client ◀── out(client) ◀─ sessionState.fromUpstream ─ amqp.Reader :core ◀── broker
//
// Each direction is one goroutine (a pump) that reads frames from its
// reader's buffer, tracks the few it must (publish, deliver, ack, channel
// and consumer lifecycle, confirms), and queues the rest as the original
// bytes. A pump flushes its output when its reader has nothing more
// buffered, so a read of many frames leaves as one writev, and nothing is
// copied or allocated per forwarded frame.
//
// Tuning is per side: the client gets the proxy's frame_max and heartbeat
// offer, the broker the proxy's own; bodies are re-chunked when the two
// frame_max values differ. Heartbeats are answered per side by a third
// goroutine, so a slow broker does not make the client miss heartbeats.
//
// Lock order: sessionState.mu, then out.mu. Server.mu is never held while
// a session lock is taken.
package proxy
