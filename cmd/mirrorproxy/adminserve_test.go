package main

import (
	"context"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mirrorproxy/mirrorproxy/testenv"
	// The docker backend, for MIRRORPROXY_TESTENV=docker.
	_ "github.com/mirrorproxy/mirrorproxy/testenv/docker"
)

// TestBrokerMessages counts a queue's ready messages on a real broker with
// a passive declare, in "/" and in another vhost; a missing queue or
// vhost, and a mirror node, give errors that say so.
func TestBrokerMessages(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a broker")
	}
	env := testenv.Start(t, testenv.Options{})
	url := env.Nodes[0].URL
	conn, err := amqp091.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("ha.count", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := ch.Publish("", "ha.count", false, false, amqp091.Publishing{Body: []byte("m")}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	master := true
	bm := brokerMessages{url: url, isMaster: func() bool { return master }}
	// Publishes are asynchronous: poll until the broker has routed all three.
	var n int
	for deadline := time.Now().Add(10 * time.Second); ; {
		if n, err = bm.Messages(ctx, "/", "ha.count"); err == nil && n == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Messages = %d, %v; want 3", n, err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
	if _, err := bm.Messages(ctx, "/", "no.such.queue"); err == nil || !strings.Contains(err.Error(), `queue "no.such.queue"`) || !strings.Contains(err.Error(), "NOT_FOUND") {
		t.Errorf("missing queue: %v", err)
	}
	if _, err := bm.Messages(ctx, "no-vhost", "ha.count"); err == nil || !strings.Contains(err.Error(), "connecting to the broker") {
		t.Errorf("missing vhost: %v", err)
	}
	master = false
	if _, err := bm.Messages(ctx, "/", "ha.count"); err == nil || !strings.Contains(err.Error(), "mirror") {
		t.Errorf("on a mirror: %v", err)
	}
}
