package main

import (
	"bytes"
	"strings"
	"testing"
)

func runArgs(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestHelp: --help (and help, -h) prints the real help on stdout and
// exits 0; no command prints it on stderr and exits 2.
func TestHelp(t *testing.T) {
	for _, arg := range []string{"--help", "-h", "help"} {
		code, out, errs := runArgs(arg)
		if code != 0 || errs != "" {
			t.Errorf("%s: exit %d, stderr %q", arg, code, errs)
		}
		for _, want := range []string{"Commands:", "  up ", "  images ", "  cleanup ", "Flags of up:", "-nodes", "-sidecar-binary", "up -nodes 1"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: help lacks %q:\n%s", arg, want, out)
			}
		}
	}
	if code, out, errs := runArgs(); code != 2 || out != "" || !strings.Contains(errs, "Commands:") {
		t.Errorf("no command: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if code, _, errs := runArgs("up", "-h"); code != 0 || !strings.Contains(errs, "-nodes") {
		t.Errorf("up -h: exit %d, %q", code, errs)
	}
}

// TestUsageErrors: an unknown command is named and the commands listed;
// a bad flag or a stray argument is a usage error (exit 2), before
// anything starts.
func TestUsageErrors(t *testing.T) {
	code, out, errs := runArgs("bogus")
	if code != 2 || out != "" || errs != "testenv: unknown command 'bogus'; the commands are: up, images, cleanup ('testenv --help' says more)\n" {
		t.Errorf("bogus: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if code, _, errs := runArgs("up", "-nodez", "1"); code != 2 || !strings.Contains(errs, "-nodez") {
		t.Errorf("up -nodez: exit %d, %q", code, errs)
	}
	if code, _, errs := runArgs("up", "extra"); code != 2 || !strings.Contains(errs, `"extra"`) {
		t.Errorf("up extra: exit %d, %q", code, errs)
	}
}
