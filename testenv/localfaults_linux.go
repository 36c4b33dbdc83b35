package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// The local backend's side of the fault handles (faults.go) and its
// sidecar: a `mirrorproxy run` process per node on a free loopback port,
// in its own process group with Pdeathsig=SIGKILL like the broker, its
// output in LogDir/sidecar.log. It is started once the broker is first
// ready and then lives independently of it: a killed broker leaves it
// running. Partitions need the docker backend.

func (r *localNode) Close() error {
	r.closing.Store(true)
	return errors.Join(r.SidecarKill(), r.Kill())
}

func (r *localNode) FailureLogs() string {
	s := fmt.Sprintf("kept %s: log %s, console %s", r.n.Name, r.n.LogFile, r.n.ConsoleLog)
	if r.be.opts.Sidecar != nil {
		s += ", sidecar " + r.sidecarLog()
	}
	if r.n.SidecarConfig != "" {
		s += " (config " + r.n.SidecarConfig + ")"
	}
	return s
}

func (r *localNode) sidecarLog() string { return filepath.Join(r.n.LogDir, "sidecar.log") }

func (r *localNode) sidecarProc() *proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sc
}

// Pause freezes or thaws the broker; SidecarPause the sidecar.
func (r *localNode) Pause(on bool) error        { return r.pause(partBroker, on) }
func (r *localNode) SidecarPause(on bool) error { return r.pause(partSidecar, on) }

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

func (r *localNode) Partition(context.Context, bool) error {
	return fmt.Errorf("%w: Partition and Heal of %s (local brokers share the loopback interface; use the docker backend)", ErrNotSupported, r.n.Name)
}

func (r *localNode) Exec(context.Context, ...string) (string, error) {
	return "", fmt.Errorf("%w: Exec on %s (run the command yourself, the broker is a local process)", ErrNotSupported, r.n.Name)
}

// firstSidecarStart starts the sidecar after the broker's first start.
// A group's sidecars start when the group forms (sidecargroup.go).
func (r *localNode) firstSidecarStart(ctx context.Context) error {
	if r.be.opts.Sidecar == nil || r.be.opts.Group != nil || r.sidecarProc() != nil {
		return nil
	}
	return r.SidecarStart(ctx)
}

func (r *localNode) SidecarStart(ctx context.Context) error {
	if r.be.opts.Sidecar == nil {
		return fmt.Errorf("%w: node %s", ErrNoSidecar, r.n.Name)
	}
	if r.SidecarRunning() {
		return fmt.Errorf("testenv: the sidecar of %s is already running", r.n.Name)
	}
	n := r.n
	logf, err := os.OpenFile(r.sidecarLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("testenv: open sidecar log: %w", err)
	}
	var logOff int64
	if st, err := logf.Stat(); err == nil {
		logOff = st.Size()
	}
	fmt.Fprintf(logf, "=== testenv: starting the sidecar of %s on %s at %s ===\n", n.Name, n.SidecarAddr, time.Now().Format(time.RFC3339Nano))
	args := []string{"run", "--listen", n.SidecarAddr, "--upstream", n.AMQPAddr, "--log-format", "json"}
	grouped := r.be.opts.Group != nil
	if grouped {
		if n.SidecarConfig == "" {
			logf.Close()
			return fmt.Errorf("testenv: the sidecar of %s has no group config yet", n.Name)
		}
		args = []string{"run", "--config", n.SidecarConfig, "--log-format", "json"}
	}
	args = append(args, r.be.opts.Sidecar.Args...)
	cmd := exec.Command(r.be.sidecarBin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return fmt.Errorf("testenv: run the sidecar %s: %w", r.be.sidecarBin, err)
	}
	p := &proc{pid: cmd.Process.Pid, done: make(chan struct{})}
	r.mu.Lock()
	ports := r.gports
	r.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		// Hold the group's ports for the next start (peers know them)
		// before anyone can see that the sidecar exited.
		if !r.closing.Load() {
			for _, port := range ports {
				reservePort(port)
			}
		}
		close(p.done)
	}()
	r.mu.Lock()
	r.sc = p
	r.mu.Unlock()

	began := time.Now()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	fail := func(err error) error {
		kerr := r.SidecarKill()
		se := &StartError{Node: n.Name, Dir: r.g.Dir, Err: err, LogTail: r.LogTail(logTailLines)}
		if out, rerr := readFrom(r.sidecarLog(), logOff); rerr == nil {
			// A port of the group taken by someone else: the formation
			// retries on new ports (a restart cannot: peers know them).
			se.retryable = p.exited() && isRetryable(out)
		}
		return errors.Join(se, kerr)
	}
	// A plain sidecar is ready when it carries the AMQP handshake to its
	// broker; a grouped one once its admin API answers (its listeners are
	// bound by then; serving clients needs a master, see WaitFormed).
	ready := func() bool { return amqpAnswers(ctx, n.SidecarAddr, "") }
	if grouped {
		ready = func() bool { return adminAnswers(ctx, n.AdminURL) }
	}
	for !ready() {
		select {
		case <-p.done:
			return fail(fmt.Errorf("the sidecar exited after %.1fs (%w)", time.Since(began).Seconds(), p.err))
		case <-ctx.Done():
			what := "sidecar port " + n.SidecarAddr
			if grouped {
				what = "sidecar admin API " + n.AdminURL
			}
			return fail(fmt.Errorf("%s not answering after %.1fs: %w", what, time.Since(began).Seconds(), ctx.Err()))
		case <-tick.C:
		}
	}
	return nil
}

// sidecarStop sends SIGTERM (the sidecar's graceful shutdown) and waits;
// when ctx ends first it kills the sidecar.
func (r *localNode) SidecarStop(ctx context.Context) error {
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
		return errors.Join(fmt.Errorf("testenv: graceful stop of the sidecar of %s did not finish: %w; killed it", r.n.Name, ctx.Err()), r.SidecarKill())
	}
}

func (r *localNode) SidecarKill() error {
	p := r.sidecarProc()
	if p == nil {
		return nil
	}
	return r.killProc(p)
}

func (r *localNode) SidecarRunning() bool {
	p := r.sidecarProc()
	return p != nil && !p.exited()
}

func (r *localNode) emergencyKillSidecar() {
	r.closing.Store(true)
	if p := r.sidecarProc(); p != nil {
		signalTree(p, syscall.SIGKILL)
	}
}

func (r *localNode) SidecarLogTail(lines int) string {
	t, err := tailFile(r.sidecarLog(), lines)
	if err != nil {
		return fmt.Sprintf("--- sidecar log of %s: %v ---\n", r.n.Name, err)
	}
	return fmt.Sprintf("--- last lines of %s ---\n%s", r.sidecarLog(), t)
}

var _ groupNode = (*localNode)(nil)

// groupAddrs reserves four loopback ports for the sidecar (client, gm,
// raft, admin; see reservePorts) and sets the Node's fields.
func (r *localNode) groupAddrs() (sidecarAddrs, error) {
	ports, err := reservePorts(4)
	if err != nil {
		return sidecarAddrs{}, fmt.Errorf("testenv: reserve the sidecar ports of %s: %w", r.n.Name, err)
	}
	addr := func(p int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)) }
	n := r.n
	n.SidecarPort = ports[0]
	n.SidecarAddr = addr(ports[0])
	n.SidecarURL = "amqp://guest:guest@" + n.SidecarAddr + "/"
	n.GMAddr, n.RaftAddr = addr(ports[1]), addr(ports[2])
	n.AdminAddr = addr(ports[3])
	n.AdminURL = "http://" + n.AdminAddr
	n.SidecarConfig = filepath.Join(r.dir, "sidecar.yaml")
	n.RaftDir = ""
	if !r.be.opts.Group.RaftInMemory {
		n.RaftDir = filepath.Join(r.dir, "raft")
	}
	r.mu.Lock()
	r.gports = ports
	r.mu.Unlock()
	return sidecarAddrs{
		listen: n.SidecarAddr, admin: n.AdminAddr, upstream: n.AMQPAddr,
		client: n.SidecarAddr, gm: n.GMAddr, raft: n.RaftAddr,
		raftDir: n.RaftDir,
	}, nil
}

func (r *localNode) writeSidecarConfig(content []byte) error {
	// The sidecar runs as this process's user (not rabbitmq): no chown.
	if err := os.WriteFile(r.n.SidecarConfig, content, 0o600); err != nil {
		return fmt.Errorf("testenv: write the sidecar config of %s: %w", r.n.Name, err)
	}
	return nil
}

func (r *localNode) resetSidecar() error {
	if r.n.RaftDir == "" {
		return nil
	}
	if err := os.RemoveAll(r.n.RaftDir); err != nil {
		return fmt.Errorf("testenv: remove the raft state of %s: %w", r.n.Name, err)
	}
	return nil
}
