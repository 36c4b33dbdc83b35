//go:build unix

package compat

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// debianPython is the interpreter that has Debian's python3-pika; the
// python3 on PATH may be another one (pyenv) without it.
const debianPython = "/usr/bin/python3"

// scriptTimeout bounds one run of a client script.
const scriptTimeout = 60 * time.Second

// needPika fails the test unless Debian's python can import pika.
func needPika(t *testing.T) {
	t.Helper()
	version, err := checkPika()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pika %s", version)
}

// checkPika returns pika's version, or an error that names the Debian
// package to install.
func checkPika() (string, error) {
	if _, err := os.Stat(debianPython); err != nil {
		return "", fmt.Errorf("%s is missing: install the Debian packages python3 and python3-pika (apt-get install -y python3-pika)", debianPython)
	}
	out, err := exec.Command(debianPython, "-c", "import pika; print(pika.__version__)").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s cannot import pika: install the Debian package python3-pika (apt-get install -y python3-pika): %w\n%s",
			debianPython, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// amqpTools are the amqp-tools commands the shell scenario runs.
var amqpTools = []string{"amqp-declare-queue", "amqp-publish", "amqp-get", "amqp-consume", "amqp-delete-queue"}

// needAMQPTools fails the test unless every amqp-tools command is on PATH.
func needAMQPTools(t *testing.T) {
	t.Helper()
	var missing []string
	for _, c := range amqpTools {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%s not found on PATH: install the Debian package amqp-tools (apt-get install -y amqp-tools)",
			strings.Join(missing, ", "))
	}
}

// runScript runs a client script and parses its stdout as a transcript.
// A non-zero exit fails the test (the transcript then says where), as does
// output that is not a transcript.
func runScript(t *testing.T, prefix string, name string, args ...string) transcript {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir(), "PYTHONDONTWRITEBYTECODE=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	// The scripts start children (amqp-consume runs sh): on timeout kill
	// the script's whole process group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	began := time.Now()
	err := cmd.Run()
	if testing.Verbose() {
		t.Logf("%s ran %v; stderr:\n%s", filepath.Base(args[0]), time.Since(began).Round(time.Millisecond),
			truncate(stderr.String(), 4000))
	}
	tr, perr := parseTranscript(stdout.Bytes(), prefix)
	if perr != nil {
		t.Errorf("%s: %v\nstdout:\n%s", filepath.Base(args[0]), perr, truncate(stdout.String(), 4000))
	}
	if err != nil {
		var ee *exec.ExitError
		switch {
		case ctx.Err() != nil:
			t.Errorf("%s did not finish within %v", filepath.Base(args[0]), scriptTimeout)
		case errors.As(err, &ee):
			t.Errorf("%s exited with status %d", filepath.Base(args[0]), ee.ExitCode())
		default:
			t.Errorf("running %s: %v", filepath.Base(args[0]), err)
		}
		t.Logf("stderr:\n%s", truncate(stderr.String(), 4000))
	}
	return tr
}

// pikaSteps are the steps every pika transcript must have.
var pikaSteps = []string{
	"connect", "connection-refused", "exchange-declare", "queue-declare", "bind",
	"queue-declare-passive", "channel-error", "channel-reopen", "server-named",
	"confirm-select", "publish-confirmed", "return", "publish-nacked", "recover-ok",
	"get", "consume-ok", "deliver", "nack", "cancel-ok", "reject", "dead-letter",
	"get-empty", "qos-ok", "prefetch-window", "ack", "server-cancel",
	"tx-select-ok", "tx-rollback-ok", "tx-commit-ok", "get-large", "channels",
	"heartbeat", "queue-delete-ok", "exchange-delete-ok", "connection-close-ok",
}

func TestPika(t *testing.T) {
	t.Parallel()
	needBroker(t)
	needPika(t)
	runLegs(t, legs(t, true), "pika", pikaSteps, func(t *testing.T, l leg, prefix string) transcript {
		url := "amqp://guest:guest@" + l.addr + "/%2F"
		return runScript(t, prefix, debianPython, "testdata/pika_scenario.py", "--url", url, "--prefix", prefix)
	})
}

// amqpToolsSteps are the steps every amqp-tools transcript must have.
var amqpToolsSteps = []string{
	"connection-refused", "queue-declare", "server-named", "publish", "get", "deliver",
	"consume-done", "get-empty", "bind-and-consume", "get-large", "queue-delete",
}

func TestAMQPTools(t *testing.T) {
	t.Parallel()
	needBroker(t)
	needAMQPTools(t)
	runLegs(t, legs(t, true), "amqptools", amqpToolsSteps, func(t *testing.T, l leg, prefix string) transcript {
		// No path: librabbitmq reads "/" as the empty vhost.
		url := "amqp://guest:guest@" + l.addr
		return runScript(t, prefix, "/bin/sh", "testdata/amqp_tools.sh", url, prefix)
	})
}
