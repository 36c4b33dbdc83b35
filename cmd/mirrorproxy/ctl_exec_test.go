package main

import (
	"strings"
	"testing"
	"time"
)

// TestExecCtlGroupOfOne runs a sidecar as the only node of a group with
// its admin API on a loopback port, then drives it with ctl in-process:
// the configured policy is listed, a change without the token is refused,
// set_policy and clear_policy with it take effect, list_queues answers.
func TestExecCtlGroupOfOne(t *testing.T) {
	solo := startSolo(t, "policies:\n  - {name: ha-all, pattern: ^ha\\., definition: {ha-mode: all}}\n")
	cfg, adminAddr := solo.cfg, solo.adminAddr

	code, out, errs := runCLI("ctl", "--config", cfg, "list_policies", "-q")
	if code != 0 || out != "/\tha-all\t^ha\\.\tall\t{\"ha-mode\":\"all\"}\t0\n" {
		t.Fatalf("list_policies: exit %d %q %q", code, out, errs)
	}
	code, _, errs = runCLI("ctl", "--admin", adminAddr, "clear_policy", "ha-all")
	if code != 69 || !strings.Contains(errs, "401") {
		t.Fatalf("clear_policy without token: exit %d %q", code, errs)
	}
	if code, _, errs = runCLI("ctl", "--config", cfg, "set_policy", "-q", "two", `^two\.`, `{"ha-mode":"exactly","ha-params":2}`); code != 0 {
		t.Fatalf("set_policy: exit %d %q", code, errs)
	}
	if code, _, errs = runCLI("ctl", "--config", cfg, "clear_policy", "-q", "ha-all"); code != 0 {
		t.Fatalf("clear_policy: exit %d %q", code, errs)
	}
	code, out, errs = runCLI("ctl", "--admin", adminAddr, "list_policies", "-q")
	if code != 0 || out != "/\ttwo\t^two\\.\tall\t{\"ha-mode\":\"exactly\",\"ha-params\":2}\t0\n" {
		t.Fatalf("list_policies after changes: exit %d %q %q", code, out, errs)
	}
	// The node lists no queues yet (see groupNode.Queues).
	code, out, errs = runCLI("ctl", "--admin", adminAddr, "list_queues", "-q", "name", "slave_pids")
	if code != 0 || out != "" {
		t.Fatalf("list_queues: exit %d %q %q", code, out, errs)
	}

	msgs := solo.stop(t, 10*time.Second)
	joined := strings.Join(msgs, "|")
	if !strings.Contains(joined, "policy set (group-wide)") || !strings.Contains(joined, "admin change refused: missing or wrong token") {
		t.Errorf("log should show the refused and the accepted change: %q", msgs)
	}
}
