package demo

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSidecarExitShowsLog: a sidecar that exits before it listens (here:
// its client address is taken, what made TestDemo fail once) is reported
// with its last log lines, although the demo hides sidecar logs by default.
func TestSidecarExitShowsLog(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "mirrorproxy")
	if out, err := exec.Command("go", "build", "-o", bin, "..").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	saved := executable
	executable = func() (string, error) { return bin, nil }
	defer func() { executable = saved }()

	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(cfg, []byte("listen:\n  address: "+taken.Addr().String()+"\nupstream:\n  address: 127.0.0.1:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var shown strings.Builder
	p, err := startSidecar(ctx, cfg, "127.0.0.1:1", &shown, false, "node-9")
	if err == nil {
		p.stop(func(string, ...any) {}, "node-9")
		t.Fatal("the sidecar started on a taken address")
	}
	msg := err.Error()
	if !strings.Contains(msg, "the sidecar of node-9 exited: exit status 1") || !strings.Contains(msg, "last log lines") ||
		!strings.Contains(msg, "cannot listen") || !strings.Contains(msg, "address already in use") {
		t.Errorf("error:\n%s\nwant the exit and the log line saying why", msg)
	}
	if shown.Len() != 0 {
		t.Errorf("log lines were printed as they came without --sidecar-logs: %q", shown.String())
	}
}
