package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// localNode runs one broker as a local rabbitmq-server process.
//
// The process runs in its own process group (Setpgid), so a Ctrl-C on the
// terminal does not reach it and Kill can signal the group. The script is
// told to exec the VM in place (see env "detached" below), so the pid we
// start is beam.smp itself and Pdeathsig=SIGKILL takes the broker down
// when the process that started it dies, even by SIGKILL.
type localNode struct {
	be  *localBackend
	g   *Group
	n   *Node
	dir string

	mu sync.Mutex // guards p and sc
	p  *proc      // the current or last broker process; nil before the first start
	sc *proc      // the current or last sidecar process (Options.Sidecar); nil before its first start

	// With Options.Group (set by the group's formation, before the
	// sidecar's first start): the sidecar's ports, reserved again whenever
	// it exits, until the node closes.
	gports  []int
	closing atomic.Bool
}

// proc is one broker process. Its waiter goroutine (owned by the proc) is
// the only caller of cmd.Wait and closes done after setting err.
type proc struct {
	pid  int
	done chan struct{}
	err  error // exit status; valid after done is closed
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (r *localNode) current() *proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.p
}

func (r *localNode) Running() bool {
	p := r.current()
	return p != nil && !p.exited()
}

func (r *localNode) Start(ctx context.Context) error {
	if r.Running() {
		return fmt.Errorf("testenv: node %s is already running", r.n.Name)
	}
	fresh := r.n.AMQPPort == 0
	for attempt := 1; ; attempt++ {
		if fresh {
			if err := r.assignPorts(); err != nil {
				return err
			}
		}
		err := r.startOnce(ctx)
		if err == nil {
			return r.firstSidecarStart(ctx)
		}
		var se *StartError
		if !errors.As(err, &se) || !se.retryable || attempt == startAttempts || ctx.Err() != nil {
			return err
		}
		r.be.opts.Logger("testenv: %s: attempt %d failed (%v); retrying", r.n.Name, attempt, se.Err)
		if !fresh {
			// Same ports and name: give epmd or the kernel a moment.
			t := time.NewTimer(time.Duration(attempt) * 500 * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return err
			case <-t.C:
			}
		}
	}
}

// assignPorts picks new ports and sets the Node's address fields. Only the
// first start does this; a restart keeps them.
func (r *localNode) assignPorts() error {
	want := 2
	if r.be.opts.Management {
		want++
	}
	plainSidecar := r.be.opts.Sidecar != nil && r.be.opts.Group == nil
	if plainSidecar {
		want++ // a group's sidecar ports are reserved when the group forms
	}
	ports, err := r.be.pickPorts(want)
	if err != nil {
		return fmt.Errorf("testenv: pick ports for %s: %w", r.n.Name, err)
	}
	n := r.n
	n.AMQPPort, n.DistPort = ports[0], ports[1]
	n.AMQPAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(n.AMQPPort))
	n.URL = "amqp://guest:guest@" + n.AMQPAddr + "/"
	if r.be.opts.Management {
		n.MgmtPort = ports[2]
		n.MgmtURL = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(n.MgmtPort))
	}
	if plainSidecar {
		n.SidecarPort = ports[want-1]
		n.SidecarAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(n.SidecarPort))
		n.SidecarURL = "amqp://guest:guest@" + n.SidecarAddr + "/"
	}
	return nil
}

func (r *localNode) config() string {
	var b strings.Builder
	b.WriteString("# written by mirrorproxy testenv on every start\n")
	b.WriteString("loopback_users.guest = true\n")
	// guest is also the sidecars' broker user: a mirror republishes a
	// client's message with its user-id property, which RabbitMQ accepts
	// only from a user tagged impersonator (docs/REPLICATION.md).
	b.WriteString("default_user_tags.administrator = true\ndefault_user_tags.impersonator = true\n")
	b.WriteString("log.file.level = info\n")
	b.WriteString("log.console = false\n")
	b.WriteString("disk_free_limit.absolute = 50MB\n")
	if r.be.opts.Management {
		fmt.Fprintf(&b, "management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = %d\n", r.n.MgmtPort)
	}
	if c := strings.TrimSpace(r.be.opts.Config); c != "" {
		b.WriteString("# from Options.Config\n")
		b.WriteString(c)
		b.WriteString("\n")
	}
	return b.String()
}

func (r *localNode) serverEnv() []string {
	n := r.n
	erlArgs := "-kernel inet_dist_use_interface {127,0,0,1} " +
		markerFlag + " " + r.g.Dir + " " + markerOwnerFlag + " " + r.be.owner
	if a := strings.TrimSpace(r.be.opts.ErlArgs); a != "" {
		erlArgs += " " + a
	}
	return append(r.be.baseEnv(r.dir),
		"RABBITMQ_NODENAME="+n.Name,
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(n.AMQPPort),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(n.DistPort),
		"RABBITMQ_MNESIA_BASE="+n.DataDir,
		"RABBITMQ_LOG_BASE="+n.LogDir,
		"RABBITMQ_CONFIG_FILE="+filepath.Join(r.dir, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(r.dir, "advanced.config"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(r.dir, "enabled_plugins"),
		"RABBITMQ_PID_FILE="+filepath.Join(r.dir, "rabbitmq.pid"),
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+erlArgs,
		"ERL_CRASH_DUMP="+filepath.Join(n.LogDir, "erl_crash.dump"),
		// rabbitmq-server runs the VM as a child of a shell that traps
		// signals, unless one of RABBITMQ_ALLOW_INPUT, NOTIFY_SOCKET or
		// "detached" is set; then it execs the VM in place. "detached" has
		// no other effect in RabbitMQ 3.10's scripts.
		"detached=1",
	)
}

// startOnce starts one broker process and waits until it is ready. On
// failure the process is gone and the error is a *StartError (or a setup
// error).
func (r *localNode) startOnce(ctx context.Context) error {
	n := r.n
	if err := r.be.writeFile(filepath.Join(r.dir, "rabbitmq.conf"), r.config(), 0o644); err != nil {
		return err
	}
	console, err := os.OpenFile(n.ConsoleLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("testenv: open console log: %w", err)
	}
	if err := r.be.chown(n.ConsoleLog); err != nil {
		console.Close()
		return err
	}
	var consoleOff int64
	if st, err := console.Stat(); err == nil {
		consoleOff = st.Size()
	}
	fmt.Fprintf(console, "=== testenv: starting %s (amqp %d, dist %d) at %s ===\n",
		n.Name, n.AMQPPort, n.DistPort, time.Now().Format(time.RFC3339Nano))

	cmd := exec.Command(r.be.serverPath)
	cmd.Dir = r.dir
	cmd.Env = r.serverEnv()
	cmd.Stdout = console // an *os.File: no copying goroutines
	cmd.Stderr = console
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
		Credential: r.be.cred,
	}
	err = cmd.Start()
	console.Close()
	if err != nil {
		return fmt.Errorf("testenv: run %s: %w", r.be.serverPath, err)
	}
	p := &proc{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	r.mu.Lock()
	r.p = p
	r.mu.Unlock()

	if err := r.waitReady(ctx, p); err != nil {
		killErr := r.killProc(p)
		se := &StartError{Node: n.Name, Dir: r.g.Dir, Err: err, LogTail: r.failureLog(consoleOff)}
		se.retryable = p.exited() && isRetryable(se.LogTail)
		if killErr != nil {
			se.Err = errors.Join(err, killErr)
		}
		return se
	}
	return nil
}

// isRetryable reports whether a failed boot's log says a port or the node
// name was taken, so another attempt may succeed.
func isRetryable(logTail string) bool {
	for _, s := range []string{
		"eaddrinuse",                                // AMQP or management listener
		"dist_port_already_used",                    // distribution port
		"Address already in use",                    // other listeners
		"bind: address already in use",              // a sidecar (Go)
		"seems to be in use by another Erlang node", // node name still in epmd
	} {
		if strings.Contains(logTail, s) {
			return true
		}
	}
	return false
}

// waitReady polls until the AMQP port answers with connection.start and
// then until `rabbitmqctl await_startup` succeeds (it fails while the VM's
// distribution is not up yet, so it is retried).
func (r *localNode) waitReady(ctx context.Context, p *proc) error {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	began := time.Now()
	exited := func() error {
		return fmt.Errorf("rabbitmq-server exited after %.1fs (%w)", time.Since(began).Seconds(), p.err)
	}
	// A broker configured with proxy_protocol = true wants a PROXY header
	// first. RabbitMQ 3.10 crashes the connection on "PROXY UNKNOWN" (its
	// socket_ends expects addresses), so send a loopback TCP4 header.
	_, port, _ := net.SplitHostPort(r.n.AMQPAddr)
	proxyHeader := "PROXY TCP4 127.0.0.1 127.0.0.1 1 " + port + "\r\n"
	answers := func() bool {
		return amqpAnswers(ctx, r.n.AMQPAddr, "") || amqpAnswers(ctx, r.n.AMQPAddr, proxyHeader)
	}
	for !answers() {
		select {
		case <-p.done:
			return exited()
		case <-ctx.Done():
			return fmt.Errorf("AMQP port %s not answering after %.1fs: %w", r.n.AMQPAddr, time.Since(began).Seconds(), ctx.Err())
		case <-tick.C:
		}
	}
	var lastErr error
	for {
		timeout := 30
		if dl, ok := ctx.Deadline(); ok {
			timeout = max(1, min(timeout, int(time.Until(dl).Seconds())))
		}
		_, err := r.Ctl(ctx, "await_startup", "--timeout", strconv.Itoa(timeout))
		if err == nil {
			return nil
		}
		lastErr = err
		select {
		case <-p.done:
			return exited()
		case <-ctx.Done():
			return fmt.Errorf("await_startup did not succeed after %.1fs: %w (last: %v)", time.Since(began).Seconds(), ctx.Err(), lastErr)
		case <-tick.C:
		}
	}
}

func (r *localNode) Stop(ctx context.Context) error {
	p := r.current()
	if p == nil || p.exited() {
		return nil
	}
	helpers := descendants(p.pid)
	signalTree(p, syscall.SIGCONT) // a paused broker cannot handle SIGTERM
	// RabbitMQ handles SIGTERM as `rabbitmqctl stop`: a clean shutdown.
	if err := syscall.Kill(p.pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("testenv: stop %s: %w", r.n.Name, err)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		kerr := r.killProc(p)
		return errors.Join(fmt.Errorf("testenv: graceful stop of %s did not finish: %w; killed it", r.n.Name, ctx.Err()), kerr)
	}
	// The VM's helpers (erl_child_setup, inet_gethost) exit when it does;
	// make sure of it.
	return r.reap(p, helpers)
}

func (r *localNode) Kill() error {
	p := r.current()
	if p == nil {
		return nil
	}
	return r.killProc(p)
}

// killProc SIGKILLs p's process group and its descendants and waits until
// all of them are gone.
func (r *localNode) killProc(p *proc) error {
	helpers := signalTree(p, syscall.SIGKILL)
	t := time.NewTimer(goneTimeout)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		return fmt.Errorf("testenv: %s (pid %d) still running %v after SIGKILL", r.n.Name, p.pid, goneTimeout)
	}
	return r.reap(p, helpers)
}

// reap waits until the helper processes of an exited broker are gone,
// killing any that linger.
func (r *localNode) reap(p *proc, helpers []int) error {
	began := time.Now()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	killed := false
	for {
		left := append(alivePids(helpers), groupMembers(p.pid)...)
		if len(left) == 0 {
			return nil
		}
		if time.Since(began) > goneTimeout {
			return fmt.Errorf("testenv: %s: helper processes %v still running %v after the broker exited", r.n.Name, left, goneTimeout)
		}
		if !killed && time.Since(began) > 2*time.Second {
			// Not gone on their own: they were ours, kill them.
			for _, pid := range left {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			killed = true
		}
		<-tick.C
	}
}

// signalTree sends sig to p's process group and to every descendant of p
// (erl_child_setup puts itself in a new session, so the group alone misses
// it), never to epmd. It returns the descendants it found.
func signalTree(p *proc, sig syscall.Signal) []int {
	if p.exited() {
		return nil
	}
	helpers := descendants(p.pid)
	_ = syscall.Kill(-p.pid, sig)
	_ = syscall.Kill(p.pid, sig)
	for _, pid := range helpers {
		_ = syscall.Kill(pid, sig)
	}
	return helpers
}

func (r *localNode) EmergencyKill() {
	r.emergencyKillSidecar()
	p := r.current()
	if p == nil {
		return
	}
	signalTree(p, syscall.SIGKILL)
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
	}
}

func (r *localNode) Ctl(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"-n", r.n.Name}, args...)
	cmd := exec.CommandContext(ctx, r.be.ctlPath, full...)
	cmd.Dir = r.be.home
	cmd.Env = r.be.baseEnv(r.dir)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
		Credential: r.be.cred,
	}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return out.String(), fmt.Errorf("testenv: rabbitmqctl -n %s %s: %w: %s",
			r.n.Name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// failureLog is the log excerpt of a failed start: the console output of
// this attempt (from offset off), whole when short, else its first and last
// lines (boot errors such as a bad config setting come first, the crash
// last), then the tail of the broker's log file.
func (r *localNode) failureLog(off int64) string {
	var b strings.Builder
	if out, err := readFrom(r.n.ConsoleLog, off); err == nil && out != "" {
		fmt.Fprintf(&b, "--- console output of %s (%s) ---\n%s", r.n.Name, r.n.ConsoleLog, headTail(out, 20, logTailLines))
		if !strings.HasSuffix(out, "\n") {
			b.WriteString("\n")
		}
	}
	if t, err := tailFile(r.n.LogFile, logTailLines/2); err == nil && t != "" {
		fmt.Fprintf(&b, "--- last lines of %s ---\n%s", r.n.LogFile, t)
		if !strings.HasSuffix(t, "\n") {
			b.WriteString("\n")
		}
	}
	return b.String()
}

func (r *localNode) LogTail(lines int) string {
	var b strings.Builder
	files := []string{r.n.ConsoleLog, r.n.LogFile}
	if r.be.opts.Sidecar != nil {
		files = append(files, r.sidecarLog())
	}
	for _, f := range files {
		t, err := tailFile(f, lines)
		if err != nil || t == "" {
			continue
		}
		fmt.Fprintf(&b, "--- last lines of %s ---\n%s", f, t)
		if !strings.HasSuffix(t, "\n") {
			b.WriteString("\n")
		}
	}
	return b.String()
}
