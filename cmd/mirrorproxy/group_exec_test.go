package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mirrorproxy/mirrorproxy/testenv"
)

// freeAddr is a loopback address for a sidecar binary to bind, reserved
// so that nothing else is handed it meanwhile (testenv.ReserveAddrs).
func freeAddr(t *testing.T) string {
	t.Helper()
	a, err := testenv.ReserveAddrs(1)
	if err != nil {
		t.Fatal(err)
	}
	return a[0]
}

// TestExecRunGroupOfOne runs a sidecar configured as the only node of a
// group: it bootstraps raft, admits itself, becomes master and serves; on
// SIGTERM it stops the clients, then the ring, raft and mirror, and exits 0.
func TestExecRunGroupOfOne(t *testing.T) {
	broker := soloBroker(t)
	client, gmAddr, raftAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	cfg := writeFile(t, "group.yaml", fmt.Sprintf(`listen:
  address: %s
upstream:
  address: %s
shutdown_grace: 3s
node:
  name: solo
peers:
  - name: solo
    client_address: %s
    gm_address: %s
    raft_address: %s
gm:
  secret: exec test secret, long enough
broker:
  username: guest
  password: guest
policies:
  - name: ha-all
    pattern: ^ha\.
    definition: {ha-mode: all}
admin:
  address: %s
`, client, broker, client, gmAddr, raftAddr, freeAddr(t)))
	cmd, lines, exited := startBinary(t, "run", "--config", cfg, "--log-format", "json")
	var msgs []string
	waitMsg := func(want string) {
		t.Helper()
		for {
			select {
			case text, ok := <-lines:
				if !ok {
					t.Fatalf("sidecar exited before %q: %q", want, msgs)
				}
				var l logLine
				if err := json.Unmarshal([]byte(text), &l); err != nil {
					t.Fatalf("stderr line is not JSON: %q", text)
				}
				msgs = append(msgs, l.msg())
				if l.msg() == want {
					return
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("no %q within 20s; log: %q", want, msgs)
			}
		}
	}
	waitMsg("serving as the master")
	msgs = stopBinary(t, cmd, lines, exited, msgs, 10*time.Second)
	if msgs[len(msgs)-1] != "stopped" || !strings.Contains(strings.Join(msgs, "|"), "view committed") {
		t.Errorf("log should show a committed view and end with stopped: %q", msgs)
	}
	// The master's own admission is no mirror's: no warning about copies.
	joined := strings.Join(msgs, "|")
	if !strings.Contains(joined, "admitted to the group as the master") || strings.Contains(joined, "mirror's copies are unsynced") {
		t.Errorf("the master's admission should be logged as the master's: %q", msgs)
	}
}

// soloNode is a sidecar binary running as the only node (so the master)
// of a group, with its admin API on a loopback port.
type soloNode struct {
	cfg, adminAddr string
	cmd            *exec.Cmd
	lines          <-chan string
	exited         <-chan error
	msgs           []string // the messages of its log lines read so far
}

// startSolo starts a soloNode whose config adds extra (YAML, e.g. a
// policies list), and waits until its admin API listens and it serves as
// the master.
// soloBroker starts the broker a group of one stands in front of: a
// node serves only while its broker answers its probe.
func soloBroker(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a broker")
	}
	return testenv.Start(t, testenv.Options{Nodes: 1}).Nodes[0].AMQPAddr
}

func startSolo(t *testing.T, extra string) *soloNode {
	t.Helper()
	broker := soloBroker(t)
	client, gmAddr, raftAddr, adminAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	cfg := writeFile(t, "group.yaml", fmt.Sprintf(`listen:
  address: %s
upstream:
  address: %s
shutdown_grace: 3s
node:
  name: solo
peers:
  - {name: solo, client_address: %s, gm_address: %s, raft_address: %s}
gm:
  secret: exec test secret, long enough
broker:
  username: guest
  password: guest
admin:
  address: %s
  token: %s
%s`, client, broker, client, gmAddr, raftAddr, adminAddr, ctlToken, extra))
	n := &soloNode{cfg: cfg, adminAddr: adminAddr}
	n.cmd, n.lines, n.exited = startBinary(t, "run", "--config", cfg, "--log-format", "json")
	deadline := time.After(60 * time.Second)
	for seen := 0; seen < 2; {
		select {
		case text, ok := <-n.lines:
			if !ok {
				t.Fatalf("sidecar exited early: %q", n.msgs)
			}
			var l logLine
			if json.Unmarshal([]byte(text), &l) == nil {
				n.msgs = append(n.msgs, l.msg())
				if l.msg() == "admin API listening" || l.msg() == "serving as the master" {
					seen++
				}
			}
		case <-deadline:
			t.Fatalf("no admin API and master within 60s: %q", n.msgs)
		}
	}
	return n
}

// stop stops the node (stopBinary) and returns all its log messages.
func (n *soloNode) stop(t *testing.T, wait time.Duration) []string {
	t.Helper()
	return stopBinary(t, n.cmd, n.lines, n.exited, n.msgs, wait)
}
