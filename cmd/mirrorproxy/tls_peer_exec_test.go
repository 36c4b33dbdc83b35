package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mirrorproxy/mirrorproxy/testenv"
	"github.com/mirrorproxy/mirrorproxy/testenv/testcerts"
)

// TestExecPeerMTLS runs a group of three sidecar binaries that
// authenticate each other with mutual TLS only (gm.tls, no gm.secret).
// node-0 and node-1 form the group; node-2 first holds a certificate of
// another CA: node-0 refuses it on the peer port, naming the certificate,
// and it is never admitted. With a certificate of the group's CA it joins,
// and a TLS client of node-2's sidecar reaches node-0's broker over the
// peer link.
func TestExecPeerMTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts brokers")
	}
	brokers := testenv.Start(t, testenv.Options{Nodes: 3}).Nodes
	dir := t.TempDir()
	ca, intruderCA := testcerts.NewCA(t, "group ca"), testcerts.NewCA(t, "intruder ca")
	good0 := testcerts.Write(t, dir, "node-0", ca.Leaf(t, testcerts.LeafOptions{Name: "node-0"}), ca)
	good1 := testcerts.Write(t, dir, "node-1", ca.Leaf(t, testcerts.LeafOptions{Name: "node-1"}), ca)
	good2 := testcerts.Write(t, dir, "node-2", ca.Leaf(t, testcerts.LeafOptions{Name: "node-2"}), ca)
	// The intruder trusts the group's CA; only its own certificate is wrong.
	bad2 := testcerts.Write(t, dir, "intruder", intruderCA.Leaf(t, testcerts.LeafOptions{Name: "node-2"}), ca)

	type addrs struct{ client, tls, gm, raft, admin string }
	var a [3]addrs
	for i := range a {
		a[i] = addrs{freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)}
	}
	peers := ""
	for i, x := range a {
		peers += fmt.Sprintf("  - {name: node-%d, client_address: %s, gm_address: %s, raft_address: %s}\n", i, x.client, x.gm, x.raft)
	}
	config := func(i int, f testcerts.Files) string {
		return writeFile(t, fmt.Sprintf("node-%d.yaml", i), fmt.Sprintf(`listen:
  address: %s
tls:
  listen: %s
  cert: %s
  key: %s
upstream:
  address: %s
shutdown_grace: 3s
node:
  name: node-%d
peers:
%sgm:
  tls:
    cert: %s
    key: %s
    ca: %s
broker:
  username: guest
  password: guest
admin:
  address: %s
`, a[i].client, a[i].tls, f.Cert, f.Key, brokers[i].AMQPAddr, i, peers, f.Cert, f.Key, f.CA, a[i].admin))
	}

	// Peers join in bootstrap order, and raft needs two of the three
	// voters: node-0 and node-1 form the group, node-2 comes last.
	n0 := launchNode(t, a[0].tls, "--config", config(0, good0))
	n1 := launchNode(t, a[1].tls, "--config", config(1, good1))
	n0.waitLog("node-0 serving as the master", func(l logLine) bool { return l.msg() == "serving as the master" })
	n1.waitLog("node-1 serving clients", func(l logLine) bool { return l.msg() == "accepting AMQP clients" && l["tls"] == true })

	intruder := launchNode(t, a[2].tls, "--config", config(2, bad2))
	refused := n0.waitLog("node-0 refusing the intruder", func(l logLine) bool {
		e, _ := l["error"].(string)
		return (l.msg() == "gm peer refused" || l.msg() == "raft peer refused") && strings.Contains(e, "tls")
	})
	if e, _ := refused["error"].(string); !strings.Contains(e, "certificate") {
		t.Errorf("the refusal does not name the certificate as the cause: %v", refused)
	}
	// Give the intruder the time a good node takes to join (a few
	// heartbeats), then check it never was admitted.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if got := intruder.logs(func(l logLine) bool {
			return strings.HasPrefix(l.msg(), "admitted") || strings.HasPrefix(l.msg(), "front serving clients")
		}); len(got) > 0 {
			t.Fatalf("a node with a certificate of another CA was admitted: %v", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = intruder.cmd.Process.Kill()
	<-intruder.done
	<-intruder.exited //nolint:errcheck // killed on purpose: its exit error says so

	// The same node with a certificate of the group's CA joins.
	n2 := launchNode(t, a[2].tls, "--config", config(2, good2))
	n2.waitLog("node-2 admitted and serving", func(l logLine) bool {
		return l.msg() == "accepting AMQP clients" && l["tls"] == true
	})
	conn, err := amqp.DialTLS("amqps://guest:guest@"+a[2].tls+"/", clientTLS(ca, nil))
	if err != nil {
		t.Fatalf("TLS client of node-2: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("mtls.q", false, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Publish("", q.Name, false, false, amqp.Publishing{Body: []byte("over the mTLS peer link")}); err != nil {
		t.Fatal(err)
	}
	var got string
	for deadline := time.Now().Add(10 * time.Second); got == "" && time.Now().Before(deadline); {
		m, ok, err := ch.Get(q.Name, true)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			got = string(m.Body)
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if got != "over the mTLS peer link" {
		t.Fatalf("got %q through node-2", got)
	}
	// The queue is on node-0's broker: node-2's front went over the peer link.
	direct, err := amqp.Dial(brokers[0].URL)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	dch, err := direct.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dch.QueueDeclarePassive(q.Name, false, true, false, false, nil); err != nil {
		t.Fatalf("the queue declared through node-2 is not on the master's broker: %v", err)
	}
	conn.Close()
	direct.Close()
	n2.stop()
	n1.stop()
	n0.stop()
}
