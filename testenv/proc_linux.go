package testenv

import (
	"os"
	"strconv"
	"strings"

	"github.com/mirrorproxy/mirrorproxy/testenv/internal/backend"
)

// procStat is the part of /proc/PID/stat testenv uses.
type procStat struct {
	pid, ppid, pgrp int
	comm            string
	state           byte
	startTime       uint64 // clock ticks after boot; with pid, names a process uniquely
}

// readStat parses /proc/PID/stat (backend.ReadStat).
func readStat(pid int) (procStat, error) {
	s, err := backend.ReadStat(pid)
	return procStat{pid: s.PID, ppid: s.PPID, pgrp: s.Pgrp, comm: s.Comm, state: s.State, startTime: s.StartTime}, err
}

// allProcs returns every process that is not a zombie.
func allProcs() []procStat {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []procStat
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		s, err := readStat(pid)
		if err != nil || s.state == 'Z' || s.state == 'X' {
			continue
		}
		out = append(out, s)
	}
	return out
}

// descendants returns the live descendants of root, except epmd (shared by
// every Erlang node of the machine; it daemonizes, but may still be a child
// for a moment after being spawned).
func descendants(root int) []int {
	children := map[int][]procStat{}
	for _, s := range allProcs() {
		children[s.ppid] = append(children[s.ppid], s)
	}
	var out []int
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			if c.comm == "epmd" {
				continue
			}
			out = append(out, c.pid)
			queue = append(queue, c.pid)
		}
	}
	return out
}

// alivePids returns the pids of pids that still run (not zombies).
func alivePids(pids []int) []int {
	var out []int
	for _, pid := range pids {
		if s, err := readStat(pid); err == nil && s.state != 'Z' && s.state != 'X' {
			out = append(out, pid)
		}
	}
	return out
}

// groupMembers returns the live members of process group pgid.
func groupMembers(pgid int) []int {
	var out []int
	for _, s := range allProcs() {
		if s.pgrp == pgid {
			out = append(out, s.pid)
		}
	}
	return out
}

// cmdline returns the arguments of pid.
func cmdline(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// marked is a broker process found by its testenv marker.
type marked struct {
	pid        int
	dir, owner string
}

// markedProcs returns every live process carrying a testenv marker.
func markedProcs() []marked {
	var out []marked
	for _, s := range allProcs() {
		args := cmdline(s.pid)
		m := marked{pid: s.pid}
		for i := 0; i+1 < len(args); i++ {
			switch args[i] {
			case markerFlag:
				m.dir = args[i+1]
			case markerOwnerFlag:
				m.owner = args[i+1]
			}
		}
		if m.dir != "" {
			out = append(out, m)
		}
	}
	return out
}

// groupProcs returns the pids of the live brokers of group directory dir.
func groupProcs(dir string) []int {
	var out []int
	for _, m := range markedProcs() {
		if m.dir == dir {
			out = append(out, m.pid)
		}
	}
	return out
}
