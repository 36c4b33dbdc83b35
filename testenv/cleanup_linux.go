package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Cleanup removes what crashed test processes left behind: for every group
// directory under os.TempDir() whose owner process is gone, it SIGKILLs the
// brokers still running from it (found by the marker on their command
// line) and removes the directory, including directories that were kept
// on purpose for a failed test. Groups of live processes, this one
// included, are left alone, so Cleanup is safe while other tests run.
// It returns the directories it removed.
//
// Brokers normally die with the process that started them (Pdeathsig), so
// after `kill -9` of a test binary or a `go test -timeout` panic usually
// only directories remain.
func Cleanup() (removed []string, err error) {
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	if err != nil {
		return nil, fmt.Errorf("testenv: cleanup: %w", err)
	}
	var errs []error
	for _, dir := range dirs {
		if ownerAlive(dir) {
			continue
		}
		if err := killMarked(dir); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("testenv: cleanup: %w", err))
			continue
		}
		removed = append(removed, dir)
	}
	return removed, errors.Join(errs...)
}

// ownerAlive reports whether the process that made group directory dir
// still runs. A directory without a readable owner file counts as alive
// for its first minute (it may be being created).
func ownerAlive(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		st, serr := os.Stat(dir)
		return serr == nil && time.Since(st.ModTime()) < time.Minute
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return false
	}
	pid, err1 := strconv.Atoi(f[0])
	start, err2 := strconv.ParseUint(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	s, err := readStat(pid)
	return err == nil && s.startTime == start && s.state != 'Z'
}

// killMarked SIGKILLs the brokers of group directory dir, and their
// helpers, and waits until they are gone.
func killMarked(dir string) error {
	pids := markedProcs(dir)
	if len(pids) == 0 {
		return nil
	}
	var all []int
	for _, pid := range pids {
		all = append(all, pid)
		all = append(all, descendants(pid)...)
	}
	for _, pid := range all {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(goneTimeout)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		left := alivePids(all)
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("testenv: cleanup %s: processes %v still running %v after SIGKILL", dir, left, goneTimeout)
		}
		<-tick.C
	}
}
