package main

import (
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
	solo := startSolo(t, "")
	cfg, adminAddr := solo.cfg, solo.adminAddr

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

	msgs := solo.stop(t, 30*time.Second)
	if joined := strings.Join(msgs, "|"); !strings.Contains(joined, "policy set (group-wide)") || !strings.Contains(joined, "queue sync requested") {
		t.Errorf("log should show the group-wide policy change and the sync request: %q", msgs)
	}
}
