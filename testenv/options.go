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
	// BackendDocker runs each node in containers through
	// testcontainers-go: a broker container, and a sidecar container when
	// Options.Sidecar is set, sharing one network namespace. It is the
	// package testenv/docker, which a program must import (driver.go).
	BackendDocker Backend = "docker"
)

// EnvBackend is the environment variable that picks the backend when
// Options.Backend is empty: "local" (default) or "docker".
const EnvBackend = "MIRRORPROXY_TESTENV"

// EnvBrokerImage and EnvSidecarImage name images for the docker backend
// when Options.BrokerImage and SidecarOptions.Image are empty.
const (
	EnvBrokerImage  = "MIRRORPROXY_TESTENV_BROKER_IMAGE"
	EnvSidecarImage = "MIRRORPROXY_TESTENV_SIDECAR_IMAGE"
	// EnvSidecarBinary names a static mirrorproxy binary for the sidecar
	// image when SidecarOptions.Binary is empty (e.g. bin/mirrorproxy of
	// `make build`).
	EnvSidecarBinary = "MIRRORPROXY_TESTENV_SIDECAR_BINARY"
)

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
// built. Every backend named here is built today; the value stays for
// callers that test for it.
var ErrBackendNotImplemented = errors.New("testenv: backend not implemented yet")

// ErrNotSupported is returned by a fault handle the node's backend cannot
// do (for example Partition on the local backend).
var ErrNotSupported = errors.New("testenv: not supported by this backend")

// ErrNoSidecar is returned by the sidecar handle of a node started
// without Options.Sidecar.
var ErrNoSidecar = errors.New("testenv: the node has no sidecar (set Options.Sidecar)")

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
	// BrokerImage is the broker image of the docker backend. Empty means
	// the EnvBrokerImage environment variable, then DefaultBrokerImage,
	// which is built from Debian's packages when missing (see
	// EnsureBrokerImage). Any RabbitMQ image with rabbitmq-server and
	// rabbitmqctl on its PATH (or in /usr/lib/rabbitmq/bin) and a user
	// rabbitmq works, e.g. the official "rabbitmq:3.13".
	BrokerImage string
	// KeepDirs keeps the group's directories after Close. Start also keeps
	// them when the test failed. See EnvKeep.
	KeepDirs bool
	// Sidecar, when set, starts a mirrorproxy sidecar beside each broker:
	// a process on a free loopback port (local backend), or a container
	// sharing the broker's network namespace (docker backend).
	Sidecar *SidecarOptions
	// Group, when set, makes the sidecars one mirrored group: each runs
	// `mirrorproxy run --config FILE` with a config that lists every node
	// as a peer (ring, raft, forwarding), the group's secret, its broker
	// user and the policies, and an admin API (Node.AdminURL). StartGroup
	// returns once every sidecar's view lists all nodes and names one
	// master. Group implies Sidecar (a nil Sidecar means its defaults).
	// Local backend only for now. See GroupOptions.
	Group *GroupOptions

	// beforeSidecars runs after a group's sidecar addresses are chosen
	// and before its sidecars start, with the attempt's number (tests
	// only: takes a port to exercise the retry).
	beforeSidecars func(g *Group, attempt int)
	// portPicker replaces the free-port search (tests only).
	portPicker func(n int) ([]int, error)
	// fakeOwner replaces the "<pid>:<start time>" owner mark of the
	// group (tests only: makes a group look orphaned to Cleanup).
	fakeOwner string
}

// SidecarOptions describe the mirrorproxy sidecar started beside each
// broker. testenv never imports the product's packages; it runs the binary
// (in a container) and talks to it over its ports only. The sidecar runs
//
//	mirrorproxy run --listen 0.0.0.0:5673 --upstream 127.0.0.1:5672 ARGS...
//
// in its container (docker backend; locally --listen is
// 127.0.0.1:<free port> and --upstream the broker's AMQPAddr), so clients
// reach the broker through it on Node.SidecarAddr.
type SidecarOptions struct {
	// Image is the sidecar image (docker backend only). Empty means the
	// EnvSidecarImage environment variable, then an image built from
	// Binary (see EnsureSidecarImage).
	Image string
	// Binary is a static (CGO_ENABLED=0) mirrorproxy binary for the image.
	// Empty means the EnvSidecarBinary environment variable, then building github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy
	// with the go command, from the current directory's module.
	Binary string
	// Args are extra arguments for `mirrorproxy run`.
	Args []string
}

// GroupOptions make the sidecars of a group one mirrored group
// (Options.Group). The zero value is a group without policies, a random
// secret and admin token, the sidecar's default timings, raft state on
// disk in each node's directory, and guest as the sidecars' broker user.
//
// Nodes are named "node-0" ... "node-<N-1>" in the group (Node.Member);
// node-0 is first in peers, so it bootstraps the group and is the first
// master. Each sidecar's config lists every node's client, gm and raft
// address; a restarted sidecar reads the same file, so it comes back on
// the same ports with the same raft directory.
type GroupOptions struct {
	// Policies are the group's policies (config key policies), e.g.
	// {Name: "ha-all", Pattern: "^ha\\.", Definition: map[string]any{"ha-mode": "all"}}.
	Policies []Policy
	// Secret is the shared secret the peers prove (gm.secret), at least
	// 16 bytes. Empty means a random one (Group.Secret).
	Secret string
	// AdminToken authorises changes through the admin API (admin.token),
	// at least 16 bytes. Empty means a random one (Group.AdminToken).
	AdminToken string
	// FailureTimeout, LeaseDuration and HeartbeatInterval set
	// raft.failure_timeout, raft.lease_duration and gm.heartbeat_interval;
	// zero keeps the sidecar's defaults (2s, 1s, 100ms). FailureTimeout
	// must exceed LeaseDuration (the sidecar refuses the config otherwise).
	FailureTimeout, LeaseDuration, HeartbeatInterval time.Duration
	// MoveSessions sets raft.move_sessions: a surviving sidecar's clients
	// keep their connections across a failover (experimental).
	MoveSessions bool
	// ShutdownGrace sets shutdown_grace, how long a stopped sidecar lets
	// sessions finish; zero keeps the sidecar's default (30s).
	ShutdownGrace time.Duration
	// RaftInMemory leaves raft.data_dir empty: the view lives in memory,
	// so a restarted sidecar comes back as a new voter. By default each
	// node keeps its raft state in its own directory (Node.RaftDir), kept
	// across restarts of the sidecar.
	RaftInMemory bool
	// BrokerUser and BrokerPassword are the sidecars' own user on their
	// brokers (config key broker). Empty means guest/guest, which the
	// brokers tag administrator and impersonator and which may log in
	// from loopback. Another user is created on every broker with
	// rabbitmqctl before the sidecars start: tag impersonator, all
	// permissions on vhost "/" (an empty password becomes a random one).
	BrokerUser, BrokerPassword string
}

// Policy is one policy of Options.Group, with the keys of RabbitMQ's
// definitions export (as in the sidecar's config file).
type Policy struct {
	// Vhost defaults to "/".
	Vhost   string `yaml:"vhost,omitempty"`
	Name    string `yaml:"name"`
	Pattern string `yaml:"pattern"`
	// ApplyTo is "queues" or "all" (default all).
	ApplyTo  string `yaml:"apply-to,omitempty"`
	Priority int    `yaml:"priority,omitempty"`
	// Definition holds the policy's keys: ha-mode, ha-params,
	// ha-sync-mode, ha-promote-on-shutdown, ...
	Definition map[string]any `yaml:"definition"`
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
		if o.BrokerImage == "" {
			o.BrokerImage = strings.TrimSpace(os.Getenv(EnvBrokerImage))
		}
	default:
		if _, ok := registered(o.Backend); !ok {
			return o, fmt.Errorf("testenv: unknown backend %q (want %q or %q; from Options.Backend or %s)",
				o.Backend, BackendLocal, BackendDocker, EnvBackend)
		}
	}
	if o.Group != nil {
		gr := *o.Group
		if o.Sidecar == nil {
			o.Sidecar = &SidecarOptions{}
		}
		if o.Backend != BackendLocal {
			return o, fmt.Errorf("testenv: Options.Group needs the local backend for now (backend %q)", o.Backend)
		}
		for _, s := range []struct {
			name string
			val  *string
		}{{"Secret", &gr.Secret}, {"AdminToken", &gr.AdminToken}} {
			if *s.val == "" {
				*s.val = randomHex(16)
			} else if len(*s.val) < 16 {
				return o, fmt.Errorf("testenv: GroupOptions.%s is %d bytes, want at least 16", s.name, len(*s.val))
			}
		}
		for _, d := range []struct {
			name string
			val  time.Duration
		}{{"FailureTimeout", gr.FailureTimeout}, {"LeaseDuration", gr.LeaseDuration},
			{"HeartbeatInterval", gr.HeartbeatInterval}, {"ShutdownGrace", gr.ShutdownGrace}} {
			if d.val < 0 {
				return o, fmt.Errorf("testenv: GroupOptions.%s is %v, want a positive duration (or zero for the sidecar's default)", d.name, d.val)
			}
		}
		switch {
		case gr.BrokerUser == "":
			gr.BrokerUser, gr.BrokerPassword = "guest", "guest"
		case gr.BrokerPassword == "" && gr.BrokerUser == "guest":
			gr.BrokerPassword = "guest"
		case gr.BrokerPassword == "":
			gr.BrokerPassword = randomHex(12)
		}
		gr.Policies = append([]Policy(nil), gr.Policies...)
		o.Group = &gr
	}
	if o.Sidecar != nil {
		sc := *o.Sidecar
		if sc.Image == "" && o.Backend == BackendDocker {
			sc.Image = strings.TrimSpace(os.Getenv(EnvSidecarImage))
		}
		if sc.Binary == "" {
			sc.Binary = strings.TrimSpace(os.Getenv(EnvSidecarBinary))
		}
		o.Sidecar = &sc
	}
	if v := os.Getenv(EnvKeep); v != "" && v != "0" {
		o.KeepDirs = true
	}
	return o, nil
}
