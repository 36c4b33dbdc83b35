package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/ops"
	"github.com/mirrorproxy/mirrorproxy/failover"
	"github.com/mirrorproxy/mirrorproxy/failover/group"
)

// TestCtlStatus: ctl status prints the node's readiness, role, view,
// members and queues for a person, and exits 1 when the node is not ready.
func TestCtlStatus(t *testing.T) {
	held := 3
	st := ops.PageStatus{Version: "v1", Grouped: true, Sessions: 2, SessionsTotal: 5, PeerSessions: 1, Withheld: 4,
		Healthy: ops.Check{OK: true}, Ready: ops.Check{OK: true},
		Node: &group.Status{Node: "node-1", Role: "mirror", Broker: "ok", Epoch: 7, Master: "node-0",
			Raft: failover.RaftStatus{Leader: "node-0", Term: 2},
			Members: []group.MemberStatus{{ID: "node-0", Role: "master", JoinEpoch: 1, HeardAgo: 0.2},
				{ID: "node-1", Role: "mirror", JoinEpoch: 2, Self: true}},
			Queues: []group.QueueStatus{{Vhost: "/", Name: "ha.q", Master: "node-0", Mirrors: []string{"node-1"}, Synced: []string{}, Held: &held}}}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/status" {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(st)
	}))
	defer srv.Close()
	code, out, errs := runCLI("ctl", "--admin", srv.URL, "status")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{
		"node       node-1 (mirror)   version v1\n",
		"ready      yes\n",
		"broker     ok\n",
		"view       epoch 7, master node-0, raft leader node-0 (term 2)\n",
		"sessions   2 open (5 since start), 1 from other sidecars, 4 confirms withheld\n",
		"members    node-0  master  join 1  heard 0.2s ago\n",
		"           node-1  mirror  join 2  -\n",
		"queues     / ha.q  mirrors node-1  synced none  3 held here\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	st.Ready = ops.Check{Reasons: []string{"the local broker is down"}}
	code, out, _ = runCLI("ctl", "--admin", srv.URL, "status")
	if code != 1 || !strings.Contains(out, "ready      no: the local broker is down\n") {
		t.Errorf("not ready: exit %d\n%s", code, out)
	}
	if code, _, errs := runCLI("ctl", "--admin", srv.URL, "status", "extra"); code != 64 || !strings.Contains(errs, "takes no arguments") {
		t.Errorf("status extra: exit %d %q", code, errs)
	}
}
