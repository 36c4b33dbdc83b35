package testenv

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Backends are drivers behind Options.Backend. The local backend is built
// into this package; the docker backend is the package testenv/docker,
// which registers itself when a program imports it:
//
//	import _ "github.com/mirrorproxy/mirrorproxy/testenv/docker"
//
// so that programs which never run containers (the mirrorproxy binary's
// demo and bench) do not link a container client. The interfaces below
// are for such backend packages; tests never call them.

// Driver runs the brokers of one group. Its methods are called by Group
// and Node only.
type Driver interface {
	// Setup prepares group-wide resources (directories, Erlang cookie,
	// images, network) and sets g.ID and g.Dir. On error it leaves
	// nothing behind. ctx is not bounded by StartTimeout (building images
	// may take minutes once).
	Setup(ctx context.Context, g *Group) error
	// NewNode prepares node n (its Index is set) and returns its driver;
	// it starts nothing. It sets n.Name and the directory fields.
	NewNode(g *Group, n *Node) (NodeDriver, error)
	// Teardown releases what Setup made, after every node is gone. With
	// keep the data and logs stay for inspection.
	Teardown(g *Group, keep bool) error
}

// NodeDriver runs one node: its broker and, when configured, its sidecar.
// Start, Stop, Kill, Close and the fault methods are never called
// concurrently for one node (Node serialises them); Running,
// EmergencyKill, Ctl, Exec, LogTail and FailureLogs may be called at any
// time.
type NodeDriver interface {
	// Start starts the broker and returns once it is ready. The first
	// start picks the ports (and sets them on the Node) and starts the
	// sidecar too; later starts reuse them.
	Start(ctx context.Context) error
	// Stop stops the broker gracefully and waits until it is gone.
	Stop(ctx context.Context) error
	// Kill kills the broker at once and waits until it is gone.
	Kill() error
	// Close removes everything of the node (broker, sidecar, containers).
	Close() error
	// EmergencyKill kills the node without waiting for a running
	// operation; used on SIGINT/SIGTERM of the process.
	EmergencyKill()
	// Ctl runs rabbitmqctl against the node's broker.
	Ctl(ctx context.Context, args ...string) (string, error)
	// Exec runs a command beside the broker (in its container).
	Exec(ctx context.Context, args ...string) (string, error)
	// Running reports whether the broker is alive.
	Running() bool
	// LogTail returns the last lines of the broker's logs.
	LogTail(lines int) string
	// FailureLogs is what a failed test gets to read: log paths, or the
	// logs of every container of the node.
	FailureLogs() string
	// Pause freezes (on) or thaws (!on) the broker.
	Pause(on bool) error
	// Partition cuts the node off the group's network (cut) or heals it.
	Partition(ctx context.Context, cut bool) error

	// The sidecar's own: start, stop, kill, freeze or thaw, whether it
	// runs, and the last lines of its log.
	SidecarStart(ctx context.Context) error
	SidecarStop(ctx context.Context) error
	SidecarKill() error
	SidecarPause(on bool) error
	SidecarRunning() bool
	SidecarLogTail(lines int) string
}

// ErrBackendNotLinked is returned by StartGroup for a backend whose package
// the program did not import (testenv/docker for "docker").
var ErrBackendNotLinked = errors.New("testenv: backend not linked into this program")

var drivers struct {
	sync.Mutex
	open map[Backend]func(Options) (Driver, error)
}

// RegisterBackend makes name a value of Options.Backend (and of
// MIRRORPROXY_TESTENV): StartGroup calls open with the options, defaults
// filled in, for every group of that backend. Backend packages call it
// from init. It panics when name is empty, "local", or registered twice.
func RegisterBackend(name Backend, open func(Options) (Driver, error)) {
	drivers.Lock()
	defer drivers.Unlock()
	if name == "" || name == BackendLocal || open == nil {
		panic(fmt.Sprintf("testenv: RegisterBackend(%q): reserved name or nil open", name))
	}
	if _, dup := drivers.open[name]; dup {
		panic(fmt.Sprintf("testenv: backend %q registered twice", name))
	}
	if drivers.open == nil {
		drivers.open = map[Backend]func(Options) (Driver, error){}
	}
	drivers.open[name] = open
}

// registered returns the open function of a registered backend.
func registered(name Backend) (func(Options) (Driver, error), bool) {
	drivers.Lock()
	defer drivers.Unlock()
	open, ok := drivers.open[name]
	return open, ok
}

// backendPackages names the package that provides each known backend
// other than local, for the error when it is not linked.
var backendPackages = map[Backend]string{
	BackendDocker: "github.com/mirrorproxy/mirrorproxy/testenv/docker",
}

func newBackend(opts Options) (Driver, error) {
	if opts.Backend == BackendLocal {
		return newLocalBackend(opts)
	}
	if open, ok := registered(opts.Backend); ok {
		return open(opts)
	}
	if pkg, known := backendPackages[opts.Backend]; known {
		return nil, fmt.Errorf("%w: backend %q needs `import _ %q` in the program (a test file will do)",
			ErrBackendNotLinked, opts.Backend, pkg)
	}
	// withDefaults rejects every other value.
	return nil, fmt.Errorf("%w: %q", ErrBackendNotImplemented, opts.Backend)
}

// Driver returns the node's driver, for backend packages and their tests
// (testenv/docker reads its container IDs through it).
func (n *Node) Driver() NodeDriver { return n.rt }
