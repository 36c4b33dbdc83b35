package demo_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildDemo builds the binary the demo runs as (it starts its sidecars
// from its own executable).
func buildDemo(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("starts brokers")
	}
	bin := filepath.Join(t.TempDir(), "mirrorproxy")
	if out, err := exec.Command("go", "build", "-o", bin, "..").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// demoCommand runs the demo; at ctx's end it is stopped with SIGINT, as
// Ctrl-C does, so it still stops what it started.
func demoCommand(ctx context.Context, bin string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, append([]string{"demo"}, args...)...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGINT) }
	cmd.WaitDelay = time.Minute
	return cmd
}

// The demo (what `make demo` runs) works end to end: three brokers, three
// sidecar processes as a mirrored group, a client through the master's
// sidecar (and a mirror's); a copy on the mirror the policy places; an
// operator's set_policy adds a mirror, listed unsynced and empty; ctl
// sync_queue makes it synced with every message, and list_queues shows
// both; the acks empty every copy; everything stops cleanly.
func TestDemo(t *testing.T) {
	bin := buildDemo(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := demoCommand(ctx, bin, "--messages", "500").CombinedOutput()
	t.Logf("demo output:\n%s", out)
	if err != nil {
		t.Fatalf("demo failed: %v", err)
	}
	for _, want := range []string{
		"500 confirmed",
		"a matching\n   policy wins over the queue's x-ha-policy argument",
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
	for _, unwanted := range []string{"Timeout: ", "exited early", "last log lines"} {
		if strings.Contains(string(out), unwanted) {
			t.Errorf("the demo's output has %q", unwanted)
		}
	}
}

// TestDemoInterrupted: SIGINT (Ctrl-C) while the client runs stops the
// demo cleanly: every sidecar stops on its SIGTERM, the brokers stop, the
// exit status is 130 and nothing it started is left listening or running.
func TestDemoInterrupted(t *testing.T) {
	bin := buildDemo(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := demoCommand(ctx, bin, "--messages", "500")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder // written by the reader until read is closed
	step3 := make(chan struct{})
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(stdout)
		seen := false
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if !seen && strings.HasPrefix(sc.Text(), "3. ") {
				seen = true
				close(step3)
			}
		}
	}()
	select {
	case <-step3:
	case <-read:
		werr := cmd.Wait()
		t.Fatalf("the demo ended (%v) before step 3:\n%s\n%s", werr, out.String(), stderr.String())
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	<-read
	err = cmd.Wait()
	text := out.String()
	t.Logf("demo output:\n%s\nstderr:\n%s", text, stderr.String())
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("exit after SIGINT: %v, want status 130", err)
	}
	if !strings.Contains(stderr.String(), "demo interrupted") {
		t.Errorf("stderr does not say the demo was interrupted: %q", stderr.String())
	}
	if n := strings.Count(text, "sidecar stopped on SIGTERM (exit 0)"); n != 3 {
		t.Errorf("%d sidecars stopped on SIGTERM, want 3", n)
	}
	if !strings.Contains(text, "brokers stopped") {
		t.Errorf("the brokers were not stopped")
	}
	// Nothing left: the sidecar processes are gone, no broker listens.
	for _, m := range regexp.MustCompile(`sidecar pid (\d+)`).FindAllStringSubmatch(text, -1) {
		pid, _ := strconv.Atoi(m[1])
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("sidecar pid %d still runs", pid)
		}
	}
	for _, m := range regexp.MustCompile(`broker \S+ on (127\.0\.0\.1:\d+)`).FindAllStringSubmatch(text, -1) {
		if c, err := net.DialTimeout("tcp", m[1], time.Second); err == nil {
			c.Close()
			t.Errorf("a broker still listens on %s", m[1])
		}
	}
}
