package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Cleanup removes what crashed test processes left behind. It SIGKILLs
// every testenv broker whose owner (the process that started it) is gone,
// found by the marker on its command line, and removes every group
// directory under os.TempDir() whose owner is gone, including directories
// that were kept on purpose for a failed test. Groups of live processes,
// this one included, are left alone, so Cleanup is safe while other tests
// run. It returns the directories it removed.
//
// Brokers normally die with the process that started them (Pdeathsig), so
// after `kill -9` of a test binary or a `go test -timeout` panic usually
// only directories remain.
func Cleanup() (removed []string, err error) {
	var errs []error
	var orphans []int
	for _, m := range markedProcs() {
		if !ownerAlive(m.owner) {
			orphans = append(orphans, m.pid)
		}
	}
	if err := killAndWait(orphans); err != nil {
		errs = append(errs, err)
	}

	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	if err != nil {
		return nil, fmt.Errorf("testenv: cleanup: %w", err)
	}
	for _, dir := range dirs {
		if dirOwnerAlive(dir) {
			continue
		}
		if left := groupProcs(dir); len(left) > 0 {
			errs = append(errs, fmt.Errorf("testenv: cleanup: %s: brokers %v of a dead owner still run", dir, left))
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

// dirOwnerAlive reports whether the process that made group directory dir
// still runs. A directory without a readable owner file counts as alive
// for its first minute (it may be being created).
func dirOwnerAlive(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		st, serr := os.Stat(dir)
		return serr == nil && time.Since(st.ModTime()) < time.Minute
	}
	return ownerAlive(strings.TrimSpace(string(b)))
}

// killAndWait SIGKILLs pids and their descendants (never epmd) and waits
// until they are gone.
func killAndWait(pids []int) error {
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
			return fmt.Errorf("testenv: cleanup: processes %v still running %v after SIGKILL", left, goneTimeout)
		}
		<-tick.C
	}
}
