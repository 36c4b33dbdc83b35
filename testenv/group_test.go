//go:build linux

package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.yaml.in/yaml/v3"
)

// TestReservePorts: a reserved port is refused to a bind that does not
// name it with SO_REUSEADDR (as bind(0) and connect() treat it), and
// granted to one that does (as the sidecar binds it).
func TestReservePorts(t *testing.T) {
	ports, err := reservePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	bind := func(port int, reuse bool) error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer syscall.Close(fd)
		if reuse {
			if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
				t.Fatal(err)
			}
		}
		return syscall.Bind(fd, &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
	}
	for _, p := range ports {
		if err := bind(p, false); !errors.Is(err, syscall.EADDRINUSE) {
			t.Errorf("port %d: plain bind: %v, want EADDRINUSE", p, err)
		}
		if err := bind(p, true); err != nil {
			t.Errorf("port %d: bind with SO_REUSEADDR: %v", p, err)
		}
	}
}

func TestGroupConfig(t *testing.T) {
	o := &GroupOptions{
		Policies:       []Policy{{Name: "ha-all", Pattern: `^ha\.`, Definition: map[string]any{"ha-mode": "all"}}},
		FailureTimeout: 3 * time.Second, LeaseDuration: 1500 * time.Millisecond,
		BrokerUser: "u", BrokerPassword: "p",
	}
	var addrs []sidecarAddrs
	for i := range 2 {
		a := func(p int) string { return "127.0.0.1:" + strconv.Itoa(1000*i+p) }
		addrs = append(addrs, sidecarAddrs{listen: a(1), admin: a(4), upstream: a(5), client: a(1), gm: a(2), raft: a(3), raftDir: fmt.Sprintf("/d/n%d/raft", i)})
	}
	b, err := groupConfig(o, "s3cret-s3cret-s3cret", "t0ken-t0ken-t0ken", 1, addrs)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := yaml.Unmarshal(b, &got); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	for _, want := range []string{
		"listen:\n    address: 127.0.0.1:1001\n",
		"node:\n    name: node-1\n",
		"- name: node-0\n      client_address: 127.0.0.1:1\n      gm_address: 127.0.0.1:2\n      raft_address: 127.0.0.1:3\n",
		"raft:\n    data_dir: /d/n1/raft\n    failure_timeout: 3s\n    lease_duration: 1.5s\n",
		"definition:\n        ha-mode: all\n",
		"admin:\n    address: 127.0.0.1:1004\n    token: t0ken-t0ken-t0ken\n",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("config lacks %q:\n%s", want, b)
		}
	}
	if strings.Contains(string(b), "heartbeat_interval") || strings.Contains(string(b), "shutdown_grace") {
		t.Errorf("zero durations should be left out:\n%s", b)
	}
}

func TestGroupOptionsDefaults(t *testing.T) {
	t.Setenv(EnvBackend, "")
	o, err := Options{Group: &GroupOptions{}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.Sidecar == nil || len(o.Group.Secret) < 16 || len(o.Group.AdminToken) < 16 ||
		o.Group.BrokerUser != "guest" || o.Group.BrokerPassword != "guest" {
		t.Fatalf("defaults: sidecar %v, group %+v", o.Sidecar, *o.Group)
	}
	if o, _ := (Options{Group: &GroupOptions{BrokerUser: "mp"}}).withDefaults(); len(o.Group.BrokerPassword) < 16 {
		t.Fatalf("a user without a password got %q", o.Group.BrokerPassword)
	}
	for _, bad := range []Options{
		{Group: &GroupOptions{Secret: "short"}},
		{Group: &GroupOptions{AdminToken: "short"}},
		{Group: &GroupOptions{LeaseDuration: -time.Second}},
		{Group: &GroupOptions{}, Backend: BackendDocker},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("accepted %+v", *bad.Group)
		}
	}
}

// TestLocalGroup starts three brokers with sidecars forming one group,
// reads the view through the admin API, publishes through a mirror's
// sidecar into an ha-mode all queue and finds the messages on every
// broker; then kills and restarts a sidecar, which comes back on the same
// ports and into the view. Someone takes a sidecar's port before the first
// start: the group forms on new ports.
func TestLocalGroup(t *testing.T) {
	brokerTest(t)
	began := time.Now()
	var taken string
	g := Start(t, Options{Backend: BackendLocal, Nodes: 3, Sidecar: &SidecarOptions{}, Group: &GroupOptions{
		Policies: []Policy{{Name: "ha-all", Pattern: `^ha\.`, ApplyTo: "queues", Definition: map[string]any{"ha-mode": "all"}}},
	}, beforeSidecars: func(g *Group, attempt int) {
		if attempt > 1 {
			return
		}
		// A process that names the port itself (with SO_REUSEADDR, as
		// Go's net.Listen) gets it despite the reservation.
		taken = g.Nodes[2].GMAddr
		l, err := net.Listen("tcp", taken)
		if err != nil {
			t.Errorf("take %s: %v", taken, err)
			return
		}
		t.Cleanup(func() { l.Close() })
	}})
	t.Logf("TIMING 3-node group formed in %.1fs", time.Since(began).Seconds())
	if taken == "" || g.Nodes[2].GMAddr == taken {
		t.Fatalf("node-2's gm address %s, taken %q: the formation was not retried on new ports", g.Nodes[2].GMAddr, taken)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if len(g.Secret) < 16 || len(g.AdminToken) < 16 {
		t.Errorf("secret %q, admin token %q", g.Secret, g.AdminToken)
	}
	for i, n := range g.Nodes {
		if n.Member != fmt.Sprintf("node-%d", i) || n.AdminURL == "" || n.GMAddr == "" || n.RaftAddr == "" ||
			n.SidecarConfig == "" || n.RaftDir == "" || g.ByMember(n.Member) != n {
			t.Fatalf("node %d: member %q admin %q gm %q raft %q config %q raft dir %q",
				i, n.Member, n.AdminURL, n.GMAddr, n.RaftAddr, n.SidecarConfig, n.RaftDir)
		}
	}
	v, err := g.Nodes[1].View(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(v.Names(), ","); got != "node-0,node-1,node-2" || v.Master != "node-0" {
		t.Fatalf("node-1's view: %v, want node-0..2 with master node-0", v)
	}
	if m, err := g.Master(ctx); err != nil || m != g.Nodes[0] {
		t.Fatalf("Master: %v, %v; want node-0", m, err)
	}

	// Through node-1, a mirror: its sidecar carries the client to the master.
	conn, err := amqp.Dial(g.Nodes[1].SidecarURL)
	if err != nil {
		t.Fatalf("dial node-1's sidecar: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("ha.q", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	const msgs = 5
	for i := range msgs {
		publishConfirmed(t, ch, "ha.q", fmt.Sprint("m", i), true)
	}
	// On every broker: the master's queue, the mirrors' copies (held
	// unacked by their sidecars; messages counts them).
	for _, n := range g.Nodes {
		for deadline := time.Now().Add(30 * time.Second); ; {
			out, err := n.Ctl(ctx, "-q", "--no-table-headers", "list_queues", "name", "messages")
			if err == nil && strings.Contains(" "+strings.Join(strings.Fields(out), " ")+" ", " ha.q "+strconv.Itoa(msgs)+" ") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s's broker has no ha.q with %d messages after 30s: %q %v", n.Member, msgs, out, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	conn.Close()

	// A killed sidecar comes back from the same config on the same ports.
	n := g.Nodes[2]
	sidecar, admin := n.SidecarAddr, n.AdminURL
	if err := n.Sidecar().Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.View(ctx); err == nil {
		t.Fatal("a killed sidecar's admin API answers")
	}
	if err := n.Sidecar().Start(ctx); err != nil {
		t.Fatalf("restart the sidecar: %v", err)
	}
	if n.SidecarAddr != sidecar || n.AdminURL != admin {
		t.Fatalf("restarted sidecar moved: %s %s, was %s %s", n.SidecarAddr, n.AdminURL, sidecar, admin)
	}
	if err := g.WaitFormed(ctx); err != nil {
		t.Fatal(err)
	}
}
