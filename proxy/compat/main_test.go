package compat

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mirrorproxy/mirrorproxy/testenv"
	// The docker backend, for MIRRORPROXY_TESTENV=docker.
	_ "github.com/mirrorproxy/mirrorproxy/testenv/docker"
)

// broker is the package's RabbitMQ node, started once in TestMain (nil
// with -short). Every leg of every client uses it, under its own names.
var broker *testenv.Node

func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		if !testing.Short() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			g, err := testenv.StartGroup(ctx, testenv.Options{Nodes: 1})
			cancel()
			if err != nil {
				fmt.Fprintln(os.Stderr, "compat: starting the test broker:", err)
				return 1
			}
			defer g.Close()
			broker = g.Nodes[0]
		}
		code := m.Run()
		if code == 0 && broker != nil {
			if err := checkCleanedUp(broker); err != nil {
				fmt.Fprintln(os.Stderr, "compat:", err)
				code = 1
			}
		}
		return code
	}()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "compat: goroutines leaked:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// checkCleanedUp fails when a run left a queue or exchange behind: every
// leg deletes what it declared.
func checkCleanedUp(node *testenv.Node) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var left []string
	for _, what := range []string{"queues", "exchanges"} {
		out, err := node.Ctl(ctx, "list_"+what, "--quiet", "--no-table-headers", "name")
		if err != nil {
			return fmt.Errorf("listing %s: %w", what, err)
		}
		for _, name := range strings.Fields(out) {
			if strings.HasPrefix(name, "compat.") || strings.HasPrefix(name, "amq.gen-") {
				left = append(left, name)
			}
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("the runs left %d queues or exchanges behind: %s", len(left), strings.Join(left, " "))
	}
	return nil
}

func needBroker(t testing.TB) *testenv.Node {
	t.Helper()
	if broker == nil {
		t.Skip("needs a RabbitMQ broker (not started with -short)")
	}
	return broker
}

// A leg is one run of a client's scenario: straight to the broker, or
// through a proxy in front of it.
type leg struct {
	name string
	// addr is the host:port the client connects to.
	addr string
	// proxy is the proxy of a proxied leg (nil for a direct one).
	proxy *testProxy
}

// legs are the runs a client makes, in order: direct, direct again (the
// two must agree: the scenario is deterministic and normalised; left out
// when again is false), then through a proxy started for this test.
func legs(t *testing.T, again bool) []leg {
	b := needBroker(t)
	ls := []leg{{name: "direct", addr: b.AMQPAddr}}
	if again {
		ls = append(ls, leg{name: "direct-again", addr: b.AMQPAddr})
	}
	return append(ls, proxyLeg(t, b.AMQPAddr))
}

// runLegs runs one client's scenario on the legs, as subtests named after
// the legs, and compares each later transcript with the first (direct)
// one. Each leg's transcript must hold every step in required and no
// "check-failed" or "error" line.
func runLegs(t *testing.T, ls []leg, client string, required []string,
	run func(t *testing.T, l leg, prefix string) transcript) {
	t.Helper()
	trs := make([]transcript, len(ls))
	for i, l := range ls {
		t.Run(l.name, func(t *testing.T) {
			var before int64
			if l.proxy != nil {
				before = l.proxy.accepted()
			}
			tr := run(t, l, uniquePrefix(client, l.name))
			if l.proxy != nil && l.proxy.accepted() == before {
				t.Errorf("the %s leg made no connection through the proxy", l.name)
			}
			requireSteps(t, l.name, tr, required...)
			forbidSteps(t, l.name, tr, "check-failed", "error")
			trs[i] = tr
			if t.Failed() || testing.Verbose() {
				t.Logf("%s transcript (%d lines):\n%s", l.name, len(tr), joinLines(tr))
			}
		})
	}
	for i := 1; i < len(ls); i++ {
		compareTranscripts(t, client, ls[0].name, trs[0], ls[i].name, trs[i])
	}
	if t.Failed() {
		for _, l := range ls {
			if l.proxy != nil {
				t.Logf("proxy log of the %s leg (last lines):\n%s", l.name, l.proxy.logs.tail(60))
			}
		}
	}
}

// uniquePrefix names everything one leg creates, e.g.
// "compat.pika.direct.3f2a9c01".
func uniquePrefix(client, legName string) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return "compat." + client + "." + legName + "." + hex.EncodeToString(b[:])
}

func joinLines(tr transcript) string {
	var s string
	for _, l := range tr {
		s += truncate(l, 600) + "\n"
	}
	return s
}

// eventually polls cond every 10ms until it holds or within has passed.
func eventually(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}
