package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestGroupFile(t *testing.T) {
	c, err := Load("testdata/group.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if !c.Grouped() || c.Node.Name != "rabbit-a" {
		t.Fatalf("node = %+v", c.Node)
	}
	want := []Peer{
		{"rabbit-a", "10.0.0.1:5673", "10.0.0.1:5680", "10.0.0.1:5681"},
		{"rabbit-b", "10.0.0.2:5673", "10.0.0.2:5680", "10.0.0.2:5681"},
		{"rabbit-c", "10.0.0.3:5673", "10.0.0.3:5680", "10.0.0.3:5681"},
	}
	if !reflect.DeepEqual(c.Peers, want) {
		t.Errorf("peers = %+v", c.Peers)
	}
	if c.GM != (GM{Secret: "a shared secret of enough length", Window: 1024, HeartbeatInterval: 50 * time.Millisecond}) {
		t.Errorf("gm = %+v", c.GM)
	}
	if c.Raft != (Raft{FailureTimeout: 3 * time.Second, LeaseDuration: 1500 * time.Millisecond, DataDir: "/var/lib/mirrorproxy"}) {
		t.Errorf("raft = %+v", c.Raft)
	}
	if got := c.BrokerURL(); got != "amqp://mirrorproxy:p%40ss%2Fword@127.0.0.1:5672/" {
		t.Errorf("BrokerURL = %q", got)
	}
	ps, err := c.PolicySet()
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := ps.Effective("/", "ha.x", false, nil); !ok || e.Policy != "ha-all" {
		t.Errorf("ha.x in / : %+v %v", e, ok)
	}
	if _, ok := ps.Effective("/", "plain", false, nil); ok {
		t.Error("plain in / is mirrored")
	}
	if e, ok := ps.Effective("orders", "o1", false, nil); !ok || e.Count != 2 {
		t.Errorf("o1 in orders: %+v %v", e, ok)
	}
	if got := c.where["peers[1].gm_address"].line; got != 13 {
		t.Errorf("peers[1].gm_address recorded at line %d, want 13", got)
	}
}

func TestGroupErrors(t *testing.T) {
	const peer = "  - name: a\n    client_address: 127.0.0.1:1\n    gm_address: 127.0.0.1:2\n    raft_address: 127.0.0.1:3\n"
	const ok = "node:\n  name: a\npeers:\n" + peer + "gm:\n  secret: sixteen bytes ok!\nbroker:\n  username: u\n"
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"valid", ok, nil},
		{"peers without a node", "peers:\n" + peer,
			[]string{`c.yaml:1: peers: is only read for a node of a group: set node.name, or remove peers`}},
		{"node without peers", "node:\n  name: a\ngm:\n  secret: sixteen bytes ok!\nbroker:\n  username: u\n",
			[]string{`c.yaml:2: node.name: a node of a group needs peers: every node, this one included, in bootstrap order`}},
		{"node not among peers", strings.Replace(ok, "name: a\npeers", "name: z\npeers", 1),
			[]string{`c.yaml:2: node.name: "z" is not among the peers; list this node there too`}},
		{"bad peer address", strings.Replace(ok, "gm_address: 127.0.0.1:2", "gm_address: nowhere", 1),
			[]string{`c.yaml:6: peers[0].gm_address: "nowhere" is not host:port (e.g. 127.0.0.1:5672, [::1]:5672, :5672)`}},
		{"peer missing an address", strings.Replace(ok, "    raft_address: 127.0.0.1:3\n", "", 1),
			[]string{`c.yaml:4: peers[0]: needs raft_address`}},
		{"duplicate peer", strings.Replace(ok, "gm:", strings.TrimPrefix(peer, "")+"gm:", 1),
			[]string{`c.yaml:8: peers[1].name: "a" is listed twice (first as peers[0])`}},
		{"peer item not a section", "node:\n  name: a\npeers:\n  - a\n" + ok[len("node:\n  name: a\npeers:\n"+peer):],
			[]string{`c.yaml:4: peers[0]: must be a section (key: value lines), not "a"`}},
		{"short secret", strings.Replace(ok, "sixteen bytes ok!", "short", 1),
			[]string{`c.yaml:9: gm.secret: is 5 bytes; use at least 16`}},
		{"no secret", strings.Replace(ok, "gm:\n  secret: sixteen bytes ok!\n", "", 1),
			[]string{`c.yaml:2: node.name: a node of a group needs gm.secret, the shared secret its peers prove (at least 16 bytes), or gm.tls (mutual TLS), or both`}},
		{"no broker user", strings.Replace(ok, "broker:\n  username: u\n", "", 1),
			[]string{`c.yaml:2: node.name: a node of a group needs broker.username for its own broker connections`}},
		{"lease not under failure timeout", ok + "raft:\n  failure_timeout: 1s\n  lease_duration: 1s\n",
			[]string{`c.yaml:13: raft.failure_timeout: raft.failure_timeout 1s must exceed raft.lease_duration 1s, so a cut-off master fences itself before it is replaced`}},
		{"data dir is a file", ok + "raft:\n  data_dir: testdata/group.yaml\n",
			[]string{`c.yaml:13: raft.data_dir: "testdata/group.yaml" is a file; name a directory (created if missing), one per node`}},
		{"data dir", ok + "raft:\n  data_dir: testdata/no-such-dir-yet\n", nil},
		{"move sessions", ok + "raft:\n  move_sessions: true\n", nil},
		{"move sessions not a bool", ok + "raft:\n  move_sessions: sometimes\n",
			[]string{`c.yaml:13: raft.move_sessions: "sometimes" is not true or false`}},
		{"bad policy pattern", ok + "policies:\n  - name: p\n    pattern: \"(\"\n    definition: {ha-mode: all}\n",
			nil}, // filled below: the message comes from replicate
		{"bad policy definition", ok + "policies:\n  - name: p\n    pattern: x\n    definition: {ha-mode: sometimes}\n",
			nil},
		{"policy priority not a number", ok + "policies:\n  - name: p\n    pattern: x\n    priority: high\n    definition: {ha-mode: all}\n",
			[]string{`c.yaml:15: policies[0].priority: "high" is not a whole number`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := checkErrors(t, "c.yaml", tc.yaml)
			switch tc.name {
			case "bad policy pattern":
				if len(got) != 1 || !strings.HasPrefix(got[0], "c.yaml:14: policies[0].pattern: ") {
					t.Errorf("errors: %q", got)
				}
				return
			case "bad policy definition":
				if len(got) != 1 || !strings.HasPrefix(got[0], "c.yaml:15: policies[0].definition: ") || !strings.Contains(got[0], "sometimes") {
					t.Errorf("errors: %q", got)
				}
				return
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("errors:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}
