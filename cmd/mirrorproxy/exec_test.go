package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// binPath is the mirrorproxy binary built by TestMain for the exec tests.
var binPath string

const testVersion = "v0.0.0-exectest"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mirrorproxy-exec")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "mirrorproxy")
	build := exec.Command("go", "build", "-ldflags", "-X main.version="+testVersion, "-o", binPath, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building mirrorproxy for the exec tests:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines left behind:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func TestExecVersion(t *testing.T) {
	out, err := exec.Command(binPath, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(out), "mirrorproxy "+testVersion+"\ncommit: ") {
		t.Errorf("version of a binary built with -X main.version: %q", out)
	}
}

// TestExecVersionCommit builds with VCS stamping and expects the commit of
// the checkout in the version output.
func TestExecVersionCommit(t *testing.T) {
	if testing.Short() {
		t.Skip("a second build of the binary; skipped with -short")
	}
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skip("not in a git checkout: no commit to stamp")
	}
	bin := filepath.Join(t.TempDir(), "mirrorproxy")
	if out, err := exec.Command("go", "build", "-buildvcs=true", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build -buildvcs=true: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := "commit: " + strings.TrimSpace(string(head)); !strings.Contains(string(out), want) {
		t.Errorf("version output %q lacks %q", out, want)
	}
}

func TestExecConfigCheckExitCodes(t *testing.T) {
	out, err := exec.Command(binPath, "config", "check", "../../config.example.yaml").CombinedOutput()
	if err != nil || string(out) != "../../config.example.yaml: ok\n" {
		t.Errorf("example: %v %q", err, out)
	}
	bad := writeFile(t, "bad.yaml", "limits:\n  heartbeat: 5x\n")
	cmd := exec.Command(binPath, "config", "check", bad)
	out, err = cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), bad+":2: limits.heartbeat:") {
		t.Errorf("bad file: %v %q", err, out)
	}
}

// logLine is one JSON log line of the sidecar.
type logLine map[string]any

func (l logLine) msg() string { s, _ := l["message"].(string); return s }

// TestExecRunSIGTERM runs a real sidecar, checks that it serves a client,
// sends SIGTERM and expects a clean exit 0 with every stderr line a JSON log
// record (stderr is a pipe, so format auto is JSON). The file sets a short
// grace and a listen address that the --listen flag overrides.
func TestExecRunSIGTERM(t *testing.T) {
	cfg := writeFile(t, "run.yaml", "listen:\n  address: 127.0.0.1:1\nshutdown_grace: 3s\nlog:\n  format: auto\n")
	cmd, lines, exited := startBinary(t, "run", "--config", cfg, "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1")

	var all []logLine
	read := func(what string) (logLine, bool) {
		t.Helper()
		select {
		case text, ok := <-lines:
			if !ok {
				return nil, false
			}
			var l logLine
			if err := json.Unmarshal([]byte(text), &l); err != nil {
				t.Fatalf("stderr line is not JSON: %q", text)
			}
			all = append(all, l)
			return l, true
		case <-time.After(10 * time.Second):
			t.Fatalf("no log line while waiting for %s; so far %v", what, all)
			return nil, false
		}
	}

	var listen string
	for listen == "" {
		l, ok := read("start")
		if !ok {
			t.Fatalf("sidecar exited before starting: %v", all)
		}
		if l.msg() == "mirrorproxy starting" {
			listen, _ = l["listen"].(string)
		}
	}

	// A client: the server must do something with it (answer, or close it
	// because the broker at 127.0.0.1:1 is down), which shows it is serving.
	if c, err := net.DialTimeout("tcp", listen, 10*time.Second); err == nil {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = c.Write([]byte("AMQP\x00\x00\x09\x01")) // a failure shows in the Read below
		_, rerr := c.Read(make([]byte, 1))
		c.Close()
		var ne net.Error
		if errors.As(rerr, &ne) && ne.Timeout() {
			t.Errorf("the sidecar neither answered nor closed a client within 10s")
		}
	}

	serr := cmd.Process.Signal(syscall.SIGTERM)
	for {
		if _, ok := read("exit"); !ok {
			break
		}
	}
	var exitErr error
	select {
	case exitErr = <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("stderr closed but the process was not reaped")
	}

	msgs := make([]string, len(all))
	for i, l := range all {
		msgs[i] = l.msg()
	}
	if serr != nil {
		t.Fatalf("signalling the sidecar: %v (log: %q)", serr, msgs)
	}
	if exitErr != nil {
		t.Fatalf("exit after SIGTERM: %v, want 0; log: %q", exitErr, msgs)
	}
	joined := strings.Join(msgs, "|")
	if !strings.Contains(joined, "cannot reach the broker at start-up") {
		t.Errorf("no start-up warning about the unreachable broker 127.0.0.1:1: %q", msgs)
	}
	if !strings.Contains(joined, "shutting down") || msgs[len(msgs)-1] != "stopped" {
		t.Errorf("log should show the shutdown and end with stopped: %q", msgs)
	}
	for _, l := range all {
		if l["level"] == nil || l["time"] == nil {
			t.Errorf("log line without level or time: %v", l)
		}
	}
}

// startBinary starts the built mirrorproxy with args. One goroutine reads its
// stderr line by line into lines (closed at the end of the stream), then
// reaps the process and sends its exit on exited. The process is killed at
// test end if it is still running.
// stopBinary sends SIGTERM to a binary startBinary started, appends the
// messages of its remaining JSON log lines to msgs, and checks that it
// exits 0 within wait.
func stopBinary(t *testing.T, cmd *exec.Cmd, lines <-chan string, exited <-chan error, msgs []string, wait time.Duration) []string {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for text := range lines {
		var l logLine
		if json.Unmarshal([]byte(text), &l) == nil {
			msgs = append(msgs, l.msg())
		}
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v; log: %q", err, msgs)
		}
	case <-time.After(wait):
		t.Fatal("not reaped")
	}
	return msgs
}

func startBinary(t *testing.T, args ...string) (*exec.Cmd, <-chan string, <-chan error) {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1000)
	exited := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill() // fails only when it has exited, which exited reports
			<-exited               //nolint:errcheck // the exit the kill caused
		}
	})
	return cmd, lines, exited
}
