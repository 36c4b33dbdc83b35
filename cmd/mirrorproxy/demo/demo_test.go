package demo_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The demo (what `make demo` runs) works end to end: broker, sidecar
// process, client through it, clean stop of both.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a broker")
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
		"consumed and acked 500 messages",
		"guest\t127.0.0.1",
		"sidecar stopped on SIGTERM (exit 0)",
		"broker stopped",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the demo's output lacks %q", want)
		}
	}
}
