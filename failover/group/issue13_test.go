package group

import (
	"fmt"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// issue13 is issue 13's scenario with amqp091-go (the proxy's own test has
// the same, against one sidecar): channels 1 and 2, a publish on 1 to an
// exchange that does not exist, channel 1 closed at once (its close
// crosses the broker's 404), then an exchange declared on channel 2.
func issue13(url string, run int) error {
	conn, err := amqp091.Dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch1, err := conn.Channel()
	if err != nil {
		return err
	}
	ch2, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := ch1.Publish("issue13-missing", "k", false, false, amqp091.Publishing{Body: []byte("lost")}); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	_ = ch1.Close() // nil, or the broker's 404 when it came first: both are fine
	x := fmt.Sprintf("ha.issue13.x.%d", run)
	if err := ch2.ExchangeDeclare(x, "fanout", false, false, false, false, nil); err != nil {
		return fmt.Errorf("declare on channel 2: %w", err)
	}
	if err := ch2.ExchangeDelete(x, false, false); err != nil {
		return fmt.Errorf("delete on channel 2: %w", err)
	}
	return conn.Close()
}

// TestIssue13ChannelCloseCrossingThroughAGroup runs issue 13's scenario 100
// times in a row through the master's sidecar (its core in process) and
// through a mirror's (the session's leg goes over the peer link).
func TestIssue13ChannelCloseCrossingThroughAGroup(t *testing.T) {
	_, s := startGroup(t, policy(t, "ha-all", `^ha\.`, map[string]any{"ha-mode": "all"}))
	const runs = 100
	for i, name := range []string{"master's sidecar", "a mirror's sidecar"} {
		url := "amqp://guest:guest@" + s.clients[i] + "/"
		ok := 0
		for run := range runs {
			if err := issue13(url, run); err != nil {
				t.Errorf("through %s, run %d: %v", name, run+1, err)
				continue
			}
			ok++
		}
		t.Logf("through %s: %d/%d", name, ok, runs)
	}
	for i, g := range s.groups {
		if n := g.ApplyFailures(); n != 0 {
			t.Errorf("node-%d: %d ops failed to apply", i, n)
		}
	}
}
