//go:build linux

package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary act as a process that starts a group and
// waits to be signalled (see helperMain).
const helperEnv = "MIRRORPROXY_TESTENV_HELPER"

func itoa(i int) string { return strconv.Itoa(i) }

// helperMain starts one broker, prints "READY <group dir>" and waits
// forever; the parent test then signals or kills it.
func helperMain() int {
	g, err := StartGroup(context.Background(), Options{Backend: BackendLocal})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	fmt.Printf("READY %s\n", g.Dir)
	select {}
}

// startHelper runs the helper and returns it with its group directory.
func startHelper(t *testing.T) (*exec.Cmd, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		_ = cmd.Wait()
		t.Fatalf("helper did not report ready: %v", err)
	}
	dir, ok := strings.CutPrefix(strings.TrimSpace(line), "READY ")
	if !ok || !strings.Contains(dir, dirPrefix) {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("helper said %q", line)
	}
	if len(groupProcs(dir)) != 1 {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("helper's broker not found by directory %s", dir)
	}
	return cmd, dir
}

// privateTmp points os.TempDir at a fresh directory for the rest of the
// test, so Cleanup only sees this test's groups (other engineers' kept
// directories in /tmp stay alone). The brokers' user must reach into it.
func privateTmp(t *testing.T) {
	t.Helper()
	d, err := os.MkdirTemp("", "testenv-tmp-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	t.Setenv("TMPDIR", d)
}

func signalledBy(err error, sig syscall.Signal) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// TestSignalKillsBrokers: SIGTERM or SIGINT to a process with an open
// group kills its brokers, removes the directory and still ends the
// process by that signal.
func TestSignalKillsBrokers(t *testing.T) {
	brokerTest(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		cmd, dir := startHelper(t)
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		if !signalledBy(err, sig) {
			t.Fatalf("helper ended with %v, want death by %v", err, sig)
		}
		if left := groupProcs(dir); len(left) != 0 {
			t.Fatalf("brokers %v survived %v of their starter", left, sig)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("directory %s left after %v: %v", dir, sig, err)
		}
	}
}

// TestHardKillThenCleanup: after SIGKILL of the starter the broker dies by
// Pdeathsig; the directory stays until Cleanup removes it.
func TestHardKillThenCleanup(t *testing.T) {
	brokerTest(t)
	privateTmp(t)
	cmd, dir := startHelper(t)
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); !signalledBy(err, syscall.SIGKILL) {
		t.Fatalf("helper ended with %v, want SIGKILL", err)
	}
	waitFor(t, 30*time.Second, "the broker to die with its starter", func() bool {
		return len(groupProcs(dir)) == 0
	})
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("directory %s should survive a hard kill: %v", dir, err)
	}
	removed, err := Cleanup()
	if err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if !slices.Contains(removed, dir) {
		t.Fatalf("cleanup removed %v, not %s", removed, dir)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("directory %s still there after Cleanup: %v", dir, err)
	}
}

// TestCleanupKillsOrphans: brokers and directories whose owner is gone
// are removed by Cleanup, even when the directory went first; live groups
// are left alone.
func TestCleanupKillsOrphans(t *testing.T) {
	brokerTest(t)
	privateTmp(t)
	// Owner "1:1" names no live process (pid 1 started later than tick 1).
	orphan := Start(t, Options{Backend: BackendLocal, fakeOwner: "1:1"})
	live := Start(t, Options{Backend: BackendLocal})
	if ownerAlive("1:1") || !dirOwnerAlive(live.Dir) || dirOwnerAlive(orphan.Dir) {
		t.Fatal("ownerAlive does not tell the fake dead owner from the live one")
	}
	removed, err := Cleanup()
	if err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if !slices.Contains(removed, orphan.Dir) {
		t.Fatalf("cleanup removed %v, not the orphaned %s", removed, orphan.Dir)
	}
	if slices.Contains(removed, live.Dir) {
		t.Fatalf("cleanup removed the live group %s", live.Dir)
	}
	if left := groupProcs(orphan.Dir); len(left) != 0 {
		t.Fatalf("orphaned brokers %v survive Cleanup", left)
	}
	if _, err := os.Stat(live.Dir); err != nil || !live.Nodes[0].Running() || len(groupProcs(live.Dir)) != 1 {
		t.Fatalf("the live group was harmed by Cleanup (dir: %v)", err)
	}
	waitFor(t, 10*time.Second, "Running() to see the orphan's death", func() bool { return !orphan.Nodes[0].Running() })

	// A broker whose directory is already gone is still found.
	orphan2 := Start(t, Options{Backend: BackendLocal, fakeOwner: "1:1"})
	if err := os.RemoveAll(orphan2.Dir); err != nil {
		t.Fatal(err)
	}
	if _, err := Cleanup(); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if left := groupProcs(orphan2.Dir); len(left) != 0 {
		t.Fatalf("broker %v without a directory survives Cleanup", left)
	}
	if !live.Nodes[0].Running() {
		t.Fatal("the live group's broker was killed")
	}
}
