//go:build linux

package docker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/mirrorproxy/mirrorproxy/testenv"
)

// helperEnv makes the test binary act as a process that starts a one-node
// docker group and waits to be signalled (see helperMain).
const helperEnv = "MIRRORPROXY_TESTENV_DOCKER_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain())
	}
	goleak.VerifyTestMain(m)
}

// helperMain starts a one-node docker group, prints "READY <group ID>" and
// waits forever; the parent test then signals or kills it.
func helperMain() int {
	g, err := testenv.StartGroup(context.Background(), testenv.Options{Backend: testenv.BackendDocker})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	fmt.Printf("READY %s\n", g.ID)
	select {}
}

// TestRegisteredBackend: a program that imports this package has the
// docker backend, and MIRRORPROXY_TESTENV=docker picks it. The broker
// image it names does not exist, so the backend refuses before it makes
// anything: "not on this Docker engine" with an engine, ErrNoEngine
// without one. Never ErrBackendNotLinked.
func TestRegisteredBackend(t *testing.T) {
	t.Setenv(testenv.EnvBackend, "docker")
	t.Setenv(testenv.EnvBrokerImage, "mirrorproxy-testenv/no-such-image:1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g, err := testenv.StartGroup(ctx, testenv.Options{})
	if err == nil {
		g.Close()
		t.Fatal("a group started on a broker image that does not exist")
	}
	if errors.Is(err, testenv.ErrBackendNotLinked) ||
		!errors.Is(err, ErrNoEngine) && !strings.Contains(err.Error(), "no-such-image:1 is not on this Docker engine") {
		t.Fatalf("MIRRORPROXY_TESTENV=docker: got %v, want the docker backend's refusal of the missing image", err)
	}
}

func signalledBy(err error, sig syscall.Signal) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// dockerNodeOf returns the docker driver of a node of a docker group.
func dockerNodeOf(t *testing.T, n *testenv.Node) *dockerNode {
	t.Helper()
	r, ok := n.Driver().(*dockerNode)
	if !ok {
		t.Fatalf("node %s has driver %T, want the docker backend's", n.Name, n.Driver())
	}
	return r
}

// publishConfirmed publishes body to queue q through the default exchange
// and waits for the broker's confirm.
func publishConfirmed(t *testing.T, ch *amqp.Channel, q, body string, persistent bool) {
	t.Helper()
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("confirm mode: %v", err)
	}
	mode := amqp.Transient
	if persistent {
		mode = amqp.Persistent
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q, true, false,
		amqp.Publishing{Body: []byte(body), DeliveryMode: mode})
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil || !ok {
		t.Fatalf("publish not confirmed: ok=%v err=%v", ok, err)
	}
}

func getOne(t *testing.T, ch *amqp.Channel, q string) string {
	t.Helper()
	d, ok, err := ch.Get(q, true)
	if err != nil {
		t.Fatalf("get from %s: %v", q, err)
	}
	if !ok {
		t.Fatalf("queue %s is empty", q)
	}
	return string(d.Body)
}
