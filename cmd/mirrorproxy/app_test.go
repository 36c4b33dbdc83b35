package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/config"
)

// runCLI runs the command line in-process and returns exit code, stdout, stderr.
func runCLI(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := runMain(append([]string{"mirrorproxy"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestVersion(t *testing.T) {
	code, out, errs := runCLI("version")
	if code != 0 || errs != "" {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 3 || lines[0] != "mirrorproxy dev" || !strings.HasPrefix(lines[1], "commit: ") ||
		lines[2] != "go: "+runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH {
		t.Errorf("version output:\n%s", out)
	}

	saved := version
	defer func() { version = saved }()
	version = "v1.2.3"
	if _, out, _ := runCLI("version"); !strings.HasPrefix(out, "mirrorproxy v1.2.3\n") {
		t.Errorf("with -X main.version=v1.2.3: %q", out)
	}

	var b bytes.Buffer
	if err := (buildInfo{Version: "v1", Commit: "abc123", Modified: true, Go: "go1 x/y"}).write(&b); err != nil ||
		b.String() != "mirrorproxy v1\ncommit: abc123 (modified)\ngo: go1 x/y\n" {
		t.Errorf("write: %q %v", b.String(), err)
	}
	if code, _, errs := runCLI("version", "extra"); code != 1 || !strings.Contains(errs, `"extra"`) {
		t.Errorf("version extra: exit %d, %q", code, errs)
	}
}

func TestCommands(t *testing.T) {
	var names []string
	for _, c := range newApp(nil, nil).Commands {
		names = append(names, c.Name)
	}
	if got := strings.Join(names, " "); got != "run config version ctl bench demo" {
		t.Errorf("commands: %s", got)
	}
	code, out, _ := runCLI("bench", "--help")
	if code != 0 || !strings.Contains(out, "mirrorproxy bench") {
		t.Errorf("bench --help: exit %d, %q", code, out)
	}
}

// TestUnknownCommand: a command that does not exist is named, the
// commands are listed, and the exit status is 2 (urfave/cli said "No help
// topic for 'bogus'", exit 3); no argument still shows the help.
func TestUnknownCommand(t *testing.T) {
	for _, tc := range []struct {
		args []string
		list []string
	}{
		{[]string{"bogus"}, []string{"run", "config", "version", "ctl", "bench", "demo"}},
		{[]string{"ctl", "bogus"}, []string{"list_queues", "set_policy", "sync_queue", "transfer_master"}},
	} {
		code, out, errs := runCLI(tc.args...)
		if code != 2 || out != "" || !strings.HasPrefix(errs, "unknown command 'bogus'; the commands are:\n") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", tc.args, code, out, errs)
		}
		for _, name := range tc.list {
			if !strings.Contains(errs, "\n  "+name+" ") {
				t.Errorf("%v: %q not listed in %q", tc.args, name, errs)
			}
		}
	}
	for _, args := range [][]string{nil, {"ctl"}, {"--help"}} {
		code, out, errs := runCLI(args...)
		if code != 0 || !strings.Contains(out, "COMMANDS:") || errs != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
}

func TestConfigCheck(t *testing.T) {
	good := writeFile(t, "good.yaml", "listen:\n  address: :5672\n")
	bad := writeFile(t, "bad.yaml", "listen:\n  address: :5672\nlimits:\n  heartbeat: 5x\n  frame_max: 10\nfoo: 1\n")

	code, out, errs := runCLI("config", "check", good)
	if code != 0 || out != good+": ok\n" || errs != "" {
		t.Errorf("good file: exit %d, stdout %q, stderr %q", code, out, errs)
	}

	code, out, errs = runCLI("config", "check", bad)
	want := bad + `:4: limits.heartbeat: "5x" is not a duration (a number with a unit: 500ms, 5s, 1m)` + "\n" +
		bad + `:5: limits.frame_max: 10 is below AMQP's minimum frame size 4096` + "\n" +
		bad + `:6: foo: unknown key (known here: admin, broker, gm, limits, listen, log, node, peers, policies, proxy_protocol, raft, shutdown_grace, tls, upstream)` + "\n"
	if code != 1 || out != "" || errs != want {
		t.Errorf("bad file: exit %d, stdout %q, stderr:\n%s\nwant:\n%s", code, out, errs, want)
	}

	// Several files: each is reported, the exit code says whether all passed.
	code, out, errs = runCLI("config", "check", good, bad)
	if code != 1 || out != good+": ok\n" || errs != want {
		t.Errorf("good+bad: exit %d, stdout %q, stderr %q", code, out, errs)
	}

	missing := filepath.Join(t.TempDir(), "missing.yaml")
	if code, _, errs := runCLI("config", "check", missing); code != 1 || !strings.Contains(errs, missing) {
		t.Errorf("missing file: exit %d, stderr %q", code, errs)
	}
	if code, _, errs := runCLI("config", "check"); code != 1 || !strings.Contains(errs, "give the config file") {
		t.Errorf("no file: exit %d, stderr %q", code, errs)
	}
}

func TestConfigCheckExampleFile(t *testing.T) {
	example := "../../config.example.yaml"
	code, out, errs := runCLI("config", "check", example)
	if code != 0 || out != example+": ok\n" {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errs)
	}
}

// runConfig runs `run ARGS` with an action that only builds the config.
func runConfig(t *testing.T, args ...string) (*config.Config, error) {
	t.Helper()
	var cfg *config.Config
	var cerr error
	cmd := runCommand()
	cmd.Action = func(c *cli.Context) error {
		cfg, cerr = loadRunConfig(c)
		return nil
	}
	app := &cli.App{Name: "mirrorproxy", Commands: []*cli.Command{cmd}, ExitErrHandler: func(*cli.Context, error) {},
		Writer: &bytes.Buffer{}, ErrWriter: &bytes.Buffer{}}
	if err := app.Run(append([]string{"mirrorproxy", "run"}, args...)); err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return cfg, cerr
}

func TestRunConfigPrecedence(t *testing.T) {
	// No file: defaults, with flags on top.
	cfg, err := runConfig(t, "--listen", "127.0.0.1:6000", "--upstream", "10.0.0.1:5672")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen.Address != "127.0.0.1:6000" || cfg.Upstream.Address != "10.0.0.1:5672" ||
		cfg.Log != config.Default().Log || cfg.File != "" {
		t.Errorf("flags only: %+v", cfg)
	}

	// File over defaults, flags over the file, other file keys kept.
	file := writeFile(t, "c.yaml", "listen:\n  address: 0.0.0.0:5672\nupstream:\n  address: broker:5672\n"+
		"log:\n  level: debug\n  format: console\nshutdown_grace: 7s\n")
	cfg, err = runConfig(t, "-c", file, "--listen", "127.0.0.1:6001", "--log-level", "warn", "--log-format", "json")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen.Address != "127.0.0.1:6001" || cfg.Upstream.Address != "broker:5672" ||
		cfg.Log.Level != "warn" || cfg.Log.Format != "json" || cfg.ShutdownGrace != 7*time.Second || cfg.File != file {
		t.Errorf("file+flags: %+v", cfg)
	}

	// The file alone.
	if cfg, err = runConfig(t, "--config", file); err != nil || cfg.Listen.Address != "0.0.0.0:5672" || cfg.Log.Level != "debug" {
		t.Errorf("file only: %+v %v", cfg, err)
	}

	// Bad flag values are named by flag; file problems by line.
	_, err = runConfig(t, "--config", file, "--upstream", "broker", "--log-level", "loud")
	want := `flag --upstream: upstream.address: "broker" is not host:port (e.g. 127.0.0.1:5672, [::1]:5672, :5672)` + "\n" +
		`flag --log-level: log.level: "loud" is not one of trace, debug, info, warn, error`
	if err == nil || err.Error() != want {
		t.Errorf("bad flags:\n%v\nwant:\n%s", err, want)
	}
	badFile := writeFile(t, "b.yaml", "log:\n  level: loud\n")
	if _, err = runConfig(t, "--config", badFile); err == nil || err.Error() != badFile+`:2: log.level: "loud" is not one of trace, debug, info, warn, error` {
		t.Errorf("bad file: %v", err)
	}
	// Flags are laid over the file before validation: a flag replaces a
	// wrong word from the file.
	if _, err = runConfig(t, "--config", badFile, "--log-level", "info"); err != nil {
		t.Errorf("a flag overriding a bad word from the file should win: %v", err)
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	code, out, errs := runCLI("run", "--listen", "nohost", "--log-format", "json")
	if code != 1 || out != "" || !strings.Contains(errs, `flag --listen: listen.address: "nohost" is not host:port`) {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errs)
	}
	code, _, errs = runCLI("run", "config.yaml")
	if code != 1 || !strings.Contains(errs, "--config") {
		t.Errorf("positional file: exit %d, stderr %q", code, errs)
	}
	code, _, errs = runCLI("run", "--nope")
	if code != 1 || !strings.Contains(errs, "nope") {
		t.Errorf("unknown flag: exit %d, stderr %q", code, errs)
	}
}

func TestNewLogger(t *testing.T) {
	cases := []struct {
		format   string
		terminal bool
		wantJSON bool
	}{
		{"json", true, true},
		{"json", false, true},
		{"console", false, false},
		{"auto", false, true},
		{"auto", true, false},
	}
	for _, tc := range cases {
		var b bytes.Buffer
		log, err := newLogger(config.Log{Level: "info", Format: tc.format}, &b, tc.terminal)
		if err != nil {
			t.Fatal(err)
		}
		log.Debug().Msg("hidden")
		log.Info().Str("k", "v").Msg("shown")
		line := strings.TrimSpace(b.String())
		var m map[string]any
		isJSON := json.Unmarshal([]byte(line), &m) == nil
		if isJSON != tc.wantJSON || strings.Contains(line, "hidden") || !strings.Contains(line, "shown") {
			t.Errorf("format %s terminal %v: %q", tc.format, tc.terminal, line)
		}
		if isJSON && (m["level"] != "info" || m["k"] != "v" || m["time"] == nil) {
			t.Errorf("JSON line lacks level/time/fields: %q", line)
		}
	}
	if _, err := newLogger(config.Log{Level: "loud", Format: "json"}, &bytes.Buffer{}, false); err == nil {
		t.Error("level loud accepted")
	}
	if isTerminal(&bytes.Buffer{}) {
		t.Error("a buffer is not a terminal")
	}
}
