package group

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// An auto-delete queue mirrored to every node goes from the mirrors when
// its last consumer at the master cancels (the master's broker deletes it
// and the master sends QueueGone), though each mirror's shadow consumer
// would have kept its copy alive.
func TestGroupQueueGone(t *testing.T) {
	env, s := startGroup(t, policy(t, "ha-all", `^gone\.`, map[string]any{"ha-mode": "all"}))

	conn := dial(t, "amqp://guest:guest@"+s.clients[0]+"/")
	ch := channel(t, conn)
	const q = "gone.auto"
	if _, err := ch.QueueDeclare(q, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.Consume(q, "gone-consumer", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	brokers := make([]*amqp091.Connection, len(env.Nodes))
	for i, node := range env.Nodes {
		brokers[i] = dial(t, node.URL)
	}
	for i := 1; i < len(env.Nodes); i++ {
		waitFor(t, fmt.Sprintf("node-%d declaring %s", i, q), 30*time.Second, func() bool { return goneExists(t, brokers[i], q) })
	}
	waitFor(t, "the master listing the queue", 30*time.Second, func() bool {
		return slices.Contains(s.groups[0].Master().Queues("/"), q)
	})

	if err := ch.Cancel("gone-consumer", false); err != nil {
		t.Fatal(err)
	}
	for i := range env.Nodes {
		waitFor(t, fmt.Sprintf("%s gone from node-%d", q, i), 60*time.Second, func() bool { return !goneExists(t, brokers[i], q) })
	}
	if got := s.groups[0].Master().Queues("/"); slices.Contains(got, q) {
		t.Fatalf("the master still lists %s: %v", q, got)
	}
	for i, g := range s.groups {
		if n := g.ApplyFailures(); n != 0 {
			t.Errorf("node-%d: %d ops failed to apply", i, n)
		}
	}
}

// goneExists asks a broker for a queue with a passive declare on a
// channel of its own (a 404 closes it).
func goneExists(t *testing.T, c *amqp091.Connection, queue string) bool {
	t.Helper()
	ch := channel(t, c)
	_, err := ch.QueueDeclarePassive(queue, false, true, false, false, nil)
	var ae *amqp091.Error
	if errors.As(err, &ae) && ae.Code == amqp091.NotFound {
		return false
	}
	if err != nil {
		t.Fatalf("passive declare of %q: %v", queue, err)
	}
	_ = ch.Close()
	return true
}
