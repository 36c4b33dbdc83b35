package testenv

import (
	"context"
	"fmt"
	"syscall"
)

// The local backend's side of the fault handles (faults.go). Sidecars
// and partitions need the docker backend.

func (r *localNode) close() error { return r.kill() }

func (r *localNode) failureLogs() string {
	return fmt.Sprintf("kept %s: log %s, console %s", r.n.Name, r.n.LogFile, r.n.ConsoleLog)
}

// pause sends SIGSTOP (or SIGCONT) to the broker's process group and its
// helper processes.
func (r *localNode) pause(p part, on bool) error {
	if p != partBroker {
		return fmt.Errorf("%w: node %s", ErrNoSidecar, r.n.Name)
	}
	pr := r.current()
	if pr == nil || pr.exited() {
		return fmt.Errorf("testenv: pause %s: the broker is not running", r.n.Name)
	}
	sig := syscall.SIGCONT
	if on {
		sig = syscall.SIGSTOP
	}
	signalTree(pr, sig)
	return nil
}

func (r *localNode) partition(context.Context, bool) error {
	return fmt.Errorf("%w: Partition and Heal of %s (local brokers share the loopback interface; use the docker backend)", ErrNotSupported, r.n.Name)
}

func (r *localNode) exec(context.Context, ...string) (string, error) {
	return "", fmt.Errorf("%w: Exec on %s (run the command yourself, the broker is a local process)", ErrNotSupported, r.n.Name)
}

func (r *localNode) sidecarStart(context.Context) error { return r.noSidecar() }
func (r *localNode) sidecarStop(context.Context) error  { return r.noSidecar() }
func (r *localNode) sidecarKill() error                 { return r.noSidecar() }
func (r *localNode) sidecarRunning() bool               { return false }

func (r *localNode) noSidecar() error { return fmt.Errorf("%w: node %s", ErrNoSidecar, r.n.Name) }
