package demo_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The demo (what `make demo` runs) works end to end: three brokers, three
// sidecar processes as a mirrored group, a client through the master's
// sidecar (and a mirror's); a copy on the mirror the policy places; an
// operator's set_policy adds a mirror, listed unsynced and empty; ctl
// sync_queue makes it synced with every message, and list_queues shows
// both; the acks empty every copy; everything stops cleanly.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts brokers")
	}
	bin := filepath.Join(t.TempDir(), "mirrorproxy")
	if out, err := exec.Command("go", "build", "-o", bin, "..").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "demo", "--messages", "500").CombinedOutput()
	t.Logf("demo output:\n%s", out)
	if err != nil {
		t.Fatalf("demo failed: %v", err)
	}
	for _, want := range []string{
		"500 confirmed",
		"hello-queue\t500\t[node-1]\t[node-1]",
		"node-0's broker: hello-queue holds 500 messages (0 unacked), 0 consumer(s)",
		"node-1's broker: hello-queue holds 500 messages (500 unacked), 1 consumer(s)",
		"node-2's broker: no hello-queue",
		"hello-queue\t500\t[node-1, node-2]\t[node-1]",
		"node-2's broker: hello-queue holds 0 messages (0 unacked), 1 consumer(s)",
		"Synchronising queue 'hello-queue' in vhost '/' ...",
		"hello-queue\t500\t[node-1, node-2]\t[node-1, node-2]",
		"node-2's broker: hello-queue holds 500 messages (500 unacked), 1 consumer(s)",
		"consumed and acked 500 messages",
		"node-1's broker: hello-queue holds 0 messages (0 unacked), 1 consumer(s)",
		"node-2's broker: hello-queue holds 0 messages (0 unacked), 1 consumer(s)",
		"connection guest 127.0.0.1",
		"kill -9 of the master's broker (node-0)",
		"lost (confirmed, never consumed): 0;",
		", 0 unexpected",
		"sidecar stopped on SIGTERM (exit 0)",
		"brokers stopped",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the demo's output lacks %q", want)
		}
	}
}
