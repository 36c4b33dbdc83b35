// Command capture records a real AMQP 0-9-1 session for the codec's tests. It
// puts a recording TCP hop between an amqp091-go client and a RabbitMQ
// broker, runs a varied session through it (declarations with arguments,
// bindings, publishes with every property and header tables of every type
// the client can write, consume, get, ack, nack, reject, recover, tx,
// confirms, qos, a channel error, close), and writes what each side sent:
//
//	<out>/client.bin  the protocol header and every frame the client sent
//	<out>/server.bin  every frame the broker sent
//
// proxy/amqp's TestCapturedSessions decodes every frame of both files and
// checks that re-encoding gives back the same octets.
//
// To capture again, start a scratch RabbitMQ node (the guest user must be
// able to log in from loopback) and run, from the repository root:
//
//	go run ./proxy/amqp/internal/capture -broker 127.0.0.1:5672 -out proxy/amqp/testdata/capture
//
// The session creates and deletes its own exchanges and queues, all named
// "capture.*".
package main
