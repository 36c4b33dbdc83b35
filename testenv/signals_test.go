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
	g, err := StartGroup(context.Background(), Options{})
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
	if len(markedProcs(dir)) != 1 {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("helper's broker not found by directory %s", dir)
	}
	return cmd, dir
}

func signalledBy(err error, sig syscall.Signal) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// TestSignalKillsBrokers: SIGTERM to a process with an open group kills
// its brokers, removes the directory and still ends the process by that
// signal.
func TestSignalKillsBrokers(t *testing.T) {
	noLeaks(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM} {
		cmd, dir := startHelper(t)
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		if !signalledBy(err, sig) {
			t.Fatalf("helper ended with %v, want death by %v", err, sig)
		}
		if left := markedProcs(dir); len(left) != 0 {
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
	noLeaks(t)
	cmd, dir := startHelper(t)
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); !signalledBy(err, syscall.SIGKILL) {
		t.Fatalf("helper ended with %v, want SIGKILL", err)
	}
	waitFor(t, 30*time.Second, "the broker to die with its starter", func() bool {
		return len(markedProcs(dir)) == 0
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

// TestCleanupKillsOrphans: a broker whose starter is gone but which still
// runs (here: a group dir whose owner file names a dead process) is killed
// by Cleanup; live groups are left alone.
func TestCleanupKillsOrphans(t *testing.T) {
	noLeaks(t)
	g := Start(t, Options{})
	live := Start(t, Options{})
	// Pretend g's owner died: point its owner file at a process that is gone.
	if err := os.WriteFile(g.Dir+"/"+ownerFile, []byte("1 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	removed, err := Cleanup()
	if err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if !slices.Contains(removed, g.Dir) {
		t.Fatalf("cleanup removed %v, not the orphaned %s", removed, g.Dir)
	}
	if slices.Contains(removed, live.Dir) {
		t.Fatalf("cleanup removed the live group %s", live.Dir)
	}
	if left := markedProcs(g.Dir); len(left) != 0 {
		t.Fatalf("orphaned brokers %v survive Cleanup", left)
	}
	if !live.Nodes[0].Running() || len(markedProcs(live.Dir)) != 1 {
		t.Fatal("the live group's broker was harmed by Cleanup")
	}
	waitFor(t, 10*time.Second, "Running() to see the orphan's death", func() bool { return !g.Nodes[0].Running() })
}
