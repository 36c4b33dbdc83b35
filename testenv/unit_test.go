//go:build linux

package testenv

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestLastLinesAndHeadTail(t *testing.T) {
	cases := []struct {
		in   string
		n    int
		want string
	}{
		{"a\nb\nc\n", 2, "b\nc\n"},
		{"a\nb\nc", 2, "b\nc"},
		{"a\nb\n", 5, "a\nb\n"},
		{"", 3, ""},
		{"only", 1, "only"},
	}
	for _, c := range cases {
		if got := lastLines(c.in, c.n); got != c.want {
			t.Errorf("lastLines(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
	var b strings.Builder
	for i := range 10 {
		b.WriteString(strings.Repeat("x", i) + "\n")
	}
	s := b.String()
	if got := headTail(s, 5, 5); got != s {
		t.Errorf("headTail of 10 lines into 5+5 changed them: %q", got)
	}
	got := headTail(s, 2, 3)
	want := "\nx\n[... 5 lines left out ...]\nxxxxxxx\nxxxxxxxx\nxxxxxxxxx\n"
	if got != want {
		t.Errorf("headTail = %q, want %q", got, want)
	}
}

func TestTailFileAndReadFrom(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(p, []byte("one\ntwo\nthree\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := tailFile(p, 2); err != nil || got != "two\nthree\n" {
		t.Fatalf("tailFile = %q, %v", got, err)
	}
	if got, err := readFrom(p, 4); err != nil || got != "two\nthree\n" {
		t.Fatalf("readFrom = %q, %v", got, err)
	}
	if _, err := tailFile(p+".missing", 2); err == nil {
		t.Fatal("tail of a missing file did not fail")
	}
}

func TestIsRetryable(t *testing.T) {
	for _, s := range []string{
		"{listen_error,eaddrinuse}",
		"{dist_port_already_used,41759,not_erlang,\"localhost\"}",
		"Protocol 'inet_tcp': the name x@localhost seems to be in use by another Erlang node",
	} {
		if !isRetryable(s) {
			t.Errorf("%q not retryable", s)
		}
	}
	if isRetryable("failed_to_prepare_configuration") {
		t.Error("a config error is retryable")
	}
}

func TestFreePortsDistinct(t *testing.T) {
	ports, err := freePorts(20)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if p <= 0 || seen[p] {
			t.Fatalf("bad or repeated port %d in %v", p, ports)
		}
		seen[p] = true
	}
}

// TestReserveAddrs: addresses are loopback, distinct across calls, and
// never in rabbitmqctl's distribution range (about 0.7% of the ephemeral
// range: among 200 ports some usually fall there without the filter).
func TestReserveAddrs(t *testing.T) {
	seen := map[string]bool{}
	for range 20 {
		addrs, err := ReserveAddrs(10)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			host, port, err := net.SplitHostPort(a)
			if err != nil || host != "127.0.0.1" {
				t.Fatalf("bad address %q", a)
			}
			p, _ := strconv.Atoi(port)
			if p >= ctlDistPortMin && p <= ctlDistPortMax {
				t.Fatalf("%s is in rabbitmqctl's distribution range", a)
			}
			if seen[a] {
				t.Fatalf("%s handed out twice", a)
			}
			seen[a] = true
		}
	}
	// Reserved means bindable by its owner, who names it.
	ln, err := net.Listen("tcp", addrsOf(t, 1)[0])
	if err != nil {
		t.Fatalf("the owner cannot bind a reserved address: %v", err)
	}
	ln.Close()
}

func addrsOf(t *testing.T, n int) []string {
	t.Helper()
	a, err := ReserveAddrs(n)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestOptionsDefaults(t *testing.T) {
	t.Setenv(EnvBackend, "")
	t.Setenv(EnvKeep, "")
	o, err := Options{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.Nodes != 1 || o.StartTimeout != DefaultStartTimeout || o.Backend != BackendLocal ||
		o.ErlArgs != DefaultErlArgs || o.Logger == nil || o.KeepDirs {
		t.Fatalf("defaults: %+v", o)
	}
	if o, _ := (Options{ErlArgs: "-"}).withDefaults(); o.ErlArgs != "" {
		t.Fatalf(`ErlArgs "-" gave %q`, o.ErlArgs)
	}
	t.Setenv(EnvKeep, "1")
	if o, _ := (Options{}).withDefaults(); !o.KeepDirs {
		t.Fatalf("%s=1 did not keep", EnvKeep)
	}
	if _, err := (Options{StartTimeout: -1}).withDefaults(); err == nil {
		t.Fatal("negative StartTimeout accepted")
	}
}
