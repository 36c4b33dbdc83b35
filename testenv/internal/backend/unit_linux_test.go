package backend

import (
	"os"
	"testing"
)

func TestParseStat(t *testing.T) {
	// A command name with spaces and parentheses must not shift fields.
	line := "4242 (we (ird) name) S 17 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10 18446744073709551615\n"
	s, err := ParseStat(4242, []byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if s.Comm != "we (ird) name" || s.State != 'S' || s.PPID != 17 || s.Pgrp != 4242 || s.StartTime != 987654 {
		t.Fatalf("parsed %+v", s)
	}
	if _, err := ParseStat(1, []byte("1 (x) S 0")); err == nil {
		t.Fatal("short stat line parsed")
	}
	own, err := ReadStat(os.Getpid())
	if err != nil || own.PID != os.Getpid() || own.PPID != os.Getppid() {
		t.Fatalf("own stat: %+v %v", own, err)
	}
}
