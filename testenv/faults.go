package testenv

import (
	"context"
	"fmt"
)

// part names one process of a node.
type part int

const (
	partBroker part = iota
	partSidecar
)

func (p part) String() string {
	if p == partSidecar {
		return "sidecar"
	}
	return "broker"
}

// Proc is a handle on one process of a node, its broker or its sidecar,
// to hurt it in a test. Get one with Node.Broker or Node.Sidecar. Its
// methods are safe for concurrent use; they run one at a time per node,
// like the Node's own.
//
// On the docker backend each process is a container: Kill is `docker kill`
// (SIGKILL), Stop is `docker stop` (SIGTERM, then SIGKILL after the
// context's deadline or 30s), Pause is `docker pause` (the cgroup
// freezer). The node's network namespace, host name and published ports
// belong to neither process (see Partition), so a killed broker leaves
// its sidecar running and reachable, and the other way round.
type Proc struct {
	n    *Node
	part part
}

// Broker returns the handle of the node's broker. Its methods do what the
// Node's Start, Stop, Kill, Restart, Pause and Unpause do.
func (n *Node) Broker() Proc { return Proc{n: n, part: partBroker} }

// Sidecar returns the handle of the node's sidecar. Without
// Options.Sidecar its methods return ErrNoSidecar.
func (n *Node) Sidecar() Proc { return Proc{n: n, part: partSidecar} }

func (p Proc) hasSidecar() error {
	if p.part == partSidecar && p.n.group.opts.Sidecar == nil {
		return fmt.Errorf("%w: node %s", ErrNoSidecar, p.n.Name)
	}
	return nil
}

// Start starts the process again (after Kill or Stop) and returns once it
// answers: the broker as Node.Start; the sidecar once its port answers
// AMQP (which needs the broker running).
func (p Proc) Start(ctx context.Context) error {
	if p.part == partBroker {
		return p.n.Start(ctx)
	}
	if err := p.hasSidecar(); err != nil {
		return err
	}
	return p.n.locked(func() error { return p.n.rt.SidecarStart(ctx) })
}

// Stop stops the process gracefully (SIGTERM) and waits until it is gone;
// when ctx ends first it is killed and the error says so. Stopping a
// stopped process is a no-op.
func (p Proc) Stop(ctx context.Context) error {
	if p.part == partBroker {
		return p.n.Stop(ctx)
	}
	if err := p.hasSidecar(); err != nil {
		return err
	}
	return p.n.locked(func() error { return p.n.rt.SidecarStop(ctx) })
}

// Kill SIGKILLs the process and waits until it is gone. Killing a stopped
// process is a no-op.
func (p Proc) Kill() error {
	if p.part == partBroker {
		return p.n.Kill()
	}
	if err := p.hasSidecar(); err != nil {
		return err
	}
	return p.n.locked(p.n.rt.SidecarKill)
}

// Restart stops the process gracefully and starts it again.
func (p Proc) Restart(ctx context.Context) error {
	if err := p.Stop(ctx); err != nil {
		return err
	}
	return p.Start(ctx)
}

// Pause freezes the process: it stays alive, holds its sockets open and
// answers nothing (SIGSTOP on the local backend, `docker pause` in
// containers). Unpause thaws it.
func (p Proc) Pause() error {
	if err := p.hasSidecar(); err != nil {
		return err
	}
	return p.n.locked(func() error { return p.pause(true) })
}

// Unpause thaws a process frozen by Pause.
func (p Proc) Unpause() error {
	if err := p.hasSidecar(); err != nil {
		return err
	}
	return p.n.locked(func() error { return p.pause(false) })
}

func (p Proc) pause(on bool) error {
	if p.part == partSidecar {
		return p.n.rt.SidecarPause(on)
	}
	return p.n.rt.Pause(on)
}

// Running reports whether the process is alive (started and not exited;
// a paused process is alive). It does not check readiness.
func (p Proc) Running() bool {
	if p.part == partBroker {
		return p.n.Running()
	}
	return p.hasSidecar() == nil && p.n.rt.SidecarRunning()
}

// Restart stops the broker gracefully and starts it again on the same
// ports and data.
func (n *Node) Restart(ctx context.Context) error { return n.Broker().Restart(ctx) }

// Pause freezes the broker; see Proc.Pause.
func (n *Node) Pause() error { return n.Broker().Pause() }

// Unpause thaws the broker.
func (n *Node) Unpause() error { return n.Broker().Unpause() }

// Partition cuts the node off the group's private network while its
// processes keep running: it can no longer reach the other nodes, nor
// they it, but it still answers on its own addresses (AMQPAddr,
// SidecarAddr), which are published through another network. Heal
// connects it again under the same host name. Docker backend only
// (ErrNotSupported on the local one). Partitioning a partitioned node is
// a no-op, as is healing a connected one.
func (n *Node) Partition(ctx context.Context) error {
	return n.locked(func() error { return n.rt.Partition(ctx, true) })
}

// Heal undoes Partition.
func (n *Node) Heal(ctx context.Context) error {
	return n.locked(func() error { return n.rt.Partition(ctx, false) })
}

// Exec runs a command beside the broker: in the broker's container, as
// user rabbitmq (docker backend; ErrNotSupported on the local one). It
// returns the combined output; a non-zero exit is an error that includes
// it.
func (n *Node) Exec(ctx context.Context, args ...string) (string, error) {
	return n.rt.Exec(ctx, args...)
}

func (n *Node) locked(f func() error) error {
	n.opMu.Lock()
	defer n.opMu.Unlock()
	if n.gone {
		return fmt.Errorf("testenv: node %s: its group is closed", n.Name)
	}
	return f()
}
