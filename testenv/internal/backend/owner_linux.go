package backend

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Stat is the part of /proc/PID/stat testenv uses.
type Stat struct {
	PID, PPID, Pgrp int
	Comm            string
	State           byte
	StartTime       uint64 // clock ticks after boot; with PID, names a process uniquely
}

// ReadStat parses /proc/PID/stat.
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Stat{}, err
	}
	return ParseStat(pid, b)
}

// ParseStat parses the contents b of /proc/PID/stat. The command name is
// in parentheses and may itself hold spaces and parentheses, so fields are
// counted from the last ')'.
func ParseStat(pid int, b []byte) (Stat, error) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return Stat{}, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[end+1:]))
	// f[0] is field 3 (state); start time is field 22.
	if len(f) < 20 {
		return Stat{}, fmt.Errorf("short /proc/%d/stat", pid)
	}
	s := Stat{PID: pid, Comm: string(b[open+1 : end]), State: f[0][0]}
	s.PPID, _ = strconv.Atoi(f[1])
	s.Pgrp, _ = strconv.Atoi(f[2])
	s.StartTime, _ = strconv.ParseUint(f[19], 10, 64)
	return s, nil
}

// SelfOwner is this process's owner mark, "<pid>:<start time>": what the
// backends write beside (local) or on (docker labels) what they make, so
// a later cleanup can tell a live owner from a dead one even when its pid
// was reused.
func SelfOwner() (string, error) {
	s, err := ReadStat(os.Getpid())
	if err != nil {
		return "", fmt.Errorf("testenv: read own start time: %w", err)
	}
	return fmt.Sprintf("%d:%d", os.Getpid(), s.StartTime), nil
}

// OwnerAlive reports whether owner ("<pid>:<start time>") names a live
// process. A malformed owner is dead.
func OwnerAlive(owner string) bool {
	p, st, ok := strings.Cut(owner, ":")
	if !ok {
		return false
	}
	pid, err1 := strconv.Atoi(p)
	start, err2 := strconv.ParseUint(st, 10, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	s, err := ReadStat(pid)
	return err == nil && s.StartTime == start && s.State != 'Z'
}
