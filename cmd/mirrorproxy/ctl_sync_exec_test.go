package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestExecCtlSyncGroupOfOne runs a sidecar as the only node (so the
// master) of a group and drives the sync verbs and a group-wide policy
// change against it: sync_queue and cancel_sync_queue of a queue never
// declared answer 404 with the API's reason, set_policy goes through the
// group, and list_queues takes the state column.
func TestExecCtlSyncGroupOfOne(t *testing.T) {
	client, gmAddr, raftAddr, adminAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	cfg := writeFile(t, "group.yaml", fmt.Sprintf(`listen:
  address: %s
upstream:
  address: 127.0.0.1:1
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
`, client, client, gmAddr, raftAddr, adminAddr, ctlToken))
	cmd, lines, exited := startBinary(t, "run", "--config", cfg, "--log-format", "json")
	var msgs []string
	deadline := time.After(60 * time.Second)
	for seen := 0; seen < 2; {
		select {
		case text, ok := <-lines:
			if !ok {
				t.Fatalf("sidecar exited early: %q", msgs)
			}
			var l logLine
			if json.Unmarshal([]byte(text), &l) == nil {
				msgs = append(msgs, l.msg())
				if l.msg() == "admin API listening" || l.msg() == "serving as the master" {
					seen++
				}
			}
		case <-deadline:
			t.Fatalf("no admin API and master within 60s: %q", msgs)
		}
	}

	code, out, errs := runCLI("ctl", "--config", cfg, "sync_queue", "-p", "v1", "no.such")
	if code != 69 || out != "Synchronising queue 'no.such' in vhost 'v1' ...\n" ||
		errs != "Error: no such mirrored queue: \"no.such\" in vhost \"v1\" (404 Not Found)\n" {
		t.Fatalf("sync_queue of an unknown queue: exit %d %q %q", code, out, errs)
	}
	code, _, errs = runCLI("ctl", "--config", cfg, "cancel_sync_queue", "-q", "no.such")
	if code != 69 || errs != "Error: no such mirrored queue: \"no.such\" in vhost \"/\" (404 Not Found)\n" {
		t.Fatalf("cancel_sync_queue of an unknown queue: exit %d %q", code, errs)
	}
	if code, _, errs = runCLI("ctl", "--config", cfg, "set_policy", "-q", "ha-all", `^ha\.`, `{"ha-mode":"all"}`); code != 0 {
		t.Fatalf("set_policy: exit %d %q", code, errs)
	}
	code, out, errs = runCLI("ctl", "--admin", adminAddr, "list_policies", "-q")
	if code != 0 || out != "/\tha-all\t^ha\\.\tall\t{\"ha-mode\":\"all\"}\t0\n" {
		t.Fatalf("list_policies: exit %d %q %q", code, out, errs)
	}
	if code, out, errs = runCLI("ctl", "--admin", adminAddr, "list_queues", "-q", "name", "state"); code != 0 || out != "" {
		t.Fatalf("list_queues: exit %d %q %q", code, out, errs)
	}

	msgs = stopBinary(t, cmd, lines, exited, msgs, 30*time.Second)
	if joined := strings.Join(msgs, "|"); !strings.Contains(joined, "policy set (group-wide)") || !strings.Contains(joined, "queue sync requested") {
		t.Errorf("log should show the group-wide policy change and the sync request: %q", msgs)
	}
}
