package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// The local backend's side of the fault handles (faults.go) and its
// sidecar: a `mirrorproxy run` process per node on a free loopback port,
// in its own process group with Pdeathsig=SIGKILL like the broker, its
// output in LogDir/sidecar.log. It is started once the broker is first
// ready and then lives independently of it: a killed broker leaves it
// running. Partitions need the docker backend.

func (r *localNode) close() error {
	return errors.Join(r.sidecarKill(), r.kill())
}

func (r *localNode) failureLogs() string {
	s := fmt.Sprintf("kept %s: log %s, console %s", r.n.Name, r.n.LogFile, r.n.ConsoleLog)
	if r.be.opts.Sidecar != nil {
		s += ", sidecar " + r.sidecarLog()
	}
	return s
}

func (r *localNode) sidecarLog() string { return filepath.Join(r.n.LogDir, "sidecar.log") }

func (r *localNode) sidecarProc() *proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sc
}

// pause sends SIGSTOP (or SIGCONT) to the process group and helper
// processes of the broker or the sidecar.
func (r *localNode) pause(p part, on bool) error {
	pr := r.current()
	if p == partSidecar {
		pr = r.sidecarProc()
	}
	if pr == nil || pr.exited() {
		return fmt.Errorf("testenv: pause the %s of %s: it is not running", p, r.n.Name)
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

// firstSidecarStart starts the sidecar after the broker's first start.
func (r *localNode) firstSidecarStart(ctx context.Context) error {
	if r.be.opts.Sidecar == nil || r.sidecarProc() != nil {
		return nil
	}
	return r.sidecarStart(ctx)
}

func (r *localNode) sidecarStart(ctx context.Context) error {
	if r.be.opts.Sidecar == nil {
		return fmt.Errorf("%w: node %s", ErrNoSidecar, r.n.Name)
	}
	if r.sidecarRunning() {
		return fmt.Errorf("testenv: the sidecar of %s is already running", r.n.Name)
	}
	n := r.n
	logf, err := os.OpenFile(r.sidecarLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("testenv: open sidecar log: %w", err)
	}
	fmt.Fprintf(logf, "=== testenv: starting the sidecar of %s on %s at %s ===\n", n.Name, n.SidecarAddr, time.Now().Format(time.RFC3339Nano))
	args := append([]string{"run", "--listen", n.SidecarAddr, "--upstream", n.AMQPAddr, "--log-format", "json"}, r.be.opts.Sidecar.Args...)
	cmd := exec.Command(r.be.sidecarBin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return fmt.Errorf("testenv: run the sidecar %s: %w", r.be.sidecarBin, err)
	}
	p := &proc{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	r.mu.Lock()
	r.sc = p
	r.mu.Unlock()

	began := time.Now()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	fail := func(err error) error {
		kerr := r.sidecarKill()
		return errors.Join(&StartError{Node: n.Name, Dir: r.g.Dir, Err: err, LogTail: r.logTail(logTailLines)}, kerr)
	}
	for !amqpAnswers(ctx, n.SidecarAddr, "") {
		select {
		case <-p.done:
			return fail(fmt.Errorf("the sidecar exited after %.1fs (%v)", time.Since(began).Seconds(), p.err))
		case <-ctx.Done():
			return fail(fmt.Errorf("sidecar port %s not answering after %.1fs: %w", n.SidecarAddr, time.Since(began).Seconds(), ctx.Err()))
		case <-tick.C:
		}
	}
	return nil
}

// sidecarStop sends SIGTERM (the sidecar's graceful shutdown) and waits;
// when ctx ends first it kills the sidecar.
func (r *localNode) sidecarStop(ctx context.Context) error {
	p := r.sidecarProc()
	if p == nil || p.exited() {
		return nil
	}
	signalTree(p, syscall.SIGCONT) // a paused sidecar cannot handle SIGTERM
	if err := syscall.Kill(p.pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("testenv: stop the sidecar of %s: %w", r.n.Name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return errors.Join(fmt.Errorf("testenv: graceful stop of the sidecar of %s did not finish: %w; killed it", r.n.Name, ctx.Err()), r.sidecarKill())
	}
}

func (r *localNode) sidecarKill() error {
	p := r.sidecarProc()
	if p == nil {
		return nil
	}
	return r.killProc(p)
}

func (r *localNode) sidecarRunning() bool {
	p := r.sidecarProc()
	return p != nil && !p.exited()
}

func (r *localNode) emergencyKillSidecar() {
	if p := r.sidecarProc(); p != nil {
		signalTree(p, syscall.SIGKILL)
	}
}
