package testenv

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// Backend names how a group's brokers are run.
type Backend string

const (
	// BackendLocal runs each broker as a local rabbitmq-server process
	// (Linux only). It is the default.
	BackendLocal Backend = "local"
	// BackendDocker runs each broker in a container. Not implemented yet:
	// StartGroup returns ErrBackendNotImplemented.
	BackendDocker Backend = "docker"
)

// EnvBackend is the environment variable that picks the backend when
// Options.Backend is empty: "local" (default) or "docker".
const EnvBackend = "MIRRORPROXY_TESTENV"

// EnvKeep is the environment variable that, when set to a non-empty value
// other than "0", keeps every group's directories after Close (as if the
// test had failed) and after an interrupt.
const EnvKeep = "MIRRORPROXY_TESTENV_KEEP"

// Defaults used for zero fields of Options.
const (
	DefaultNodes        = 1
	DefaultStartTimeout = 120 * time.Second
	// DefaultErlArgs are extra Erlang VM flags given to every broker.
	// "+stbt u" leaves schedulers unbound (RabbitMQ binds them, "db"):
	// several brokers on a small box then share the cores instead of each
	// pinning its schedulers to the same CPUs. BenchmarkStartGroup on 2
	// busy cores (load ~12): 1 node 6.4s vs 8.2s with RabbitMQ's flags,
	// 3 nodes 11.9s vs 16.9s; "+S 1:1" was in between (7.5s, 15.5s).
	DefaultErlArgs = "+stbt u"
)

// ErrBackendNotImplemented is returned for a backend that is named but not
// built yet (the docker backend).
var ErrBackendNotImplemented = errors.New("testenv: backend not implemented yet")

// ErrNotInstalled is returned when rabbitmq-server cannot be found.
var ErrNotInstalled = errors.New("rabbitmq-server not found: install it with `apt-get install -y rabbitmq-server`")

// Options describe a group to start. The zero value starts one broker.
type Options struct {
	// Nodes is the number of independent single-node brokers (default 1).
	Nodes int
	// Management enables the rabbitmq_management plugin on a random
	// loopback port (Node.MgmtURL). It adds a few seconds to startup.
	Management bool
	// StartTimeout bounds the start of the whole group, including retries
	// on ports taken by someone else (default 120s). The context given to
	// StartGroup bounds it too.
	StartTimeout time.Duration
	// Logger receives progress lines. Start defaults it to t.Logf;
	// StartGroup to discarding. It may be called from several goroutines
	// at once, but never after StartGroup, Node methods or Close returned.
	Logger func(format string, args ...any)
	// Config holds extra rabbitmq.conf lines (new-style sysctl format),
	// appended after the ones testenv writes.
	Config string
	// ErlArgs are extra Erlang VM flags (RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS).
	// Empty means DefaultErlArgs; "-" means none.
	ErlArgs string
	// Backend picks how brokers run. Empty means the EnvBackend
	// environment variable, then BackendLocal.
	Backend Backend
	// KeepDirs keeps the group's directories after Close. Start also keeps
	// them when the test failed. See EnvKeep.
	KeepDirs bool
	// Sidecar, when set, will start a mirrorproxy sidecar process beside
	// each broker. Not implemented yet: StartGroup returns an error.
	Sidecar *SidecarOptions

	// portPicker replaces the free-port search (tests only).
	portPicker func(n int) ([]int, error)
	// fakeOwner replaces the "<pid>:<start time>" owner mark of the
	// group (tests only: makes a group look orphaned to Cleanup).
	fakeOwner string
}

// SidecarOptions will describe the mirrorproxy sidecar started beside each
// broker (the binary built from cmd/mirrorproxy). It is a placeholder: the
// group does not start sidecars yet. testenv never imports the product's
// packages; it will run the binary as a process (or container) and talk
// to it over its ports only.
type SidecarOptions struct {
	// Binary is the path of the mirrorproxy binary.
	Binary string
	// Args are extra arguments for `mirrorproxy run`.
	Args []string
}

// withDefaults returns a copy with defaults filled in, or an error naming
// the bad field.
func (o Options) withDefaults() (Options, error) {
	if o.Nodes == 0 {
		o.Nodes = DefaultNodes
	}
	if o.Nodes < 0 {
		return o, fmt.Errorf("testenv: Options.Nodes is %d, want at least 1", o.Nodes)
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = DefaultStartTimeout
	}
	if o.StartTimeout < 0 {
		return o, fmt.Errorf("testenv: Options.StartTimeout is %v, want a positive duration", o.StartTimeout)
	}
	if o.Logger == nil {
		o.Logger = func(string, ...any) {}
	}
	switch o.ErlArgs {
	case "":
		o.ErlArgs = DefaultErlArgs
	case "-":
		o.ErlArgs = ""
	}
	if o.Backend == "" {
		o.Backend = Backend(strings.TrimSpace(os.Getenv(EnvBackend)))
	}
	if o.Backend == "" {
		o.Backend = BackendLocal
	}
	switch o.Backend {
	case BackendLocal:
	case BackendDocker:
		return o, fmt.Errorf("%w: %q (set %s=local or leave it empty)", ErrBackendNotImplemented, o.Backend, EnvBackend)
	default:
		return o, fmt.Errorf("testenv: unknown backend %q (want %q or %q; from Options.Backend or %s)",
			o.Backend, BackendLocal, BackendDocker, EnvBackend)
	}
	if o.Sidecar != nil {
		return o, errors.New("testenv: Options.Sidecar: starting mirrorproxy sidecars is not implemented yet")
	}
	if v := os.Getenv(EnvKeep); v != "" && v != "0" {
		o.KeepDirs = true
	}
	return o, nil
}
