package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"

	"github.com/mirrorproxy/mirrorproxy/testenv"
	"github.com/mirrorproxy/mirrorproxy/testenv/internal/backend"
)

// dockerNode runs one node as a pod, a broker and maybe a sidecar
// container (see backend.go).
type dockerNode struct {
	be *dockerBackend
	g  *testenv.Group
	n  *testenv.Node

	mu      sync.Mutex // guards the ids (read by emergencyKill and logs)
	pod     string
	broker  string
	sidecar string
}

func (r *dockerNode) ids() (pod, broker, sidecar string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pod, r.broker, r.sidecar
}

func (r *dockerNode) labels(role string) map[string]string {
	l := map[string]string{labelRole: role}
	for k, v := range r.be.labels {
		l[k] = v
	}
	return l
}

// start creates the node on its first call (pod, broker, sidecar) and
// otherwise starts the existing broker container again.
func (r *dockerNode) Start(ctx context.Context) error {
	pod, broker, _ := r.ids()
	if broker != "" {
		if r.containerRunning(broker) {
			return fmt.Errorf("testenv: node %s is already running", r.n.Name)
		}
		if _, err := r.be.cli.ContainerStart(ctx, broker, client.ContainerStartOptions{}); err != nil {
			return r.startError(fmt.Errorf("start broker container: %w", err))
		}
		return r.waitBroker(ctx)
	}
	if pod == "" {
		if err := r.createPod(ctx); err != nil {
			return r.startError(err)
		}
	}
	if err := r.createBroker(ctx); err != nil {
		return r.startError(err)
	}
	if err := r.waitBroker(ctx); err != nil {
		return err
	}
	if r.be.opts.Sidecar == nil {
		return nil
	}
	if err := r.createSidecar(ctx); err != nil {
		return r.startError(err)
	}
	return r.waitSidecar(ctx)
}

func (r *dockerNode) createPod(ctx context.Context) error {
	n := r.n
	ports := []string{brokerPort}
	if r.be.opts.Sidecar != nil {
		ports = append(ports, sidecarPort)
	}
	if r.be.opts.Management {
		ports = append(ports, mgmtPort)
	}
	bindings := network.PortMap{}
	exposed := make([]string, 0, len(ports))
	for _, p := range ports {
		port := network.MustParsePort(p + "/tcp")
		bindings[port] = []network.PortBinding{{HostIP: netip.MustParseAddr("127.0.0.1")}}
		exposed = append(exposed, port.String())
	}
	c, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: testcontainers.ContainerRequest{
			Image:          r.be.images.broker,
			Name:           n.Host,
			Entrypoint:     []string{"sleep", "infinity"},
			ExposedPorts:   exposed, // exactly these: not the image's
			Labels:         r.labels("pod"),
			Networks:       []string{"bridge", r.be.netName},
			NetworkAliases: map[string][]string{r.be.netName: {n.Host}},
			ConfigModifier: func(cfg *container.Config) {
				cfg.Hostname = n.Host
				cfg.User = "0"
			},
			HostConfigModifier: func(hc *container.HostConfig) {
				hc.Init = new(true)
				hc.PortBindings = bindings
			},
		},
		Started: true,
		Logger:  tcLogger(r.be.opts.Logger),
	})
	if c != nil {
		r.mu.Lock()
		r.pod = c.GetContainerID()
		r.mu.Unlock()
	}
	if err != nil {
		return fmt.Errorf("create pod container %s: %w", n.Host, err)
	}
	info, err := r.be.cli.ContainerInspect(ctx, r.pod, client.ContainerInspectOptions{})
	if err != nil {
		return fmt.Errorf("inspect pod container %s: %w", n.Host, err)
	}
	hostPort := func(p string) (int, error) {
		for _, b := range info.Container.NetworkSettings.Ports[network.MustParsePort(p+"/tcp")] {
			if port, err := strconv.Atoi(b.HostPort); err == nil && port > 0 {
				return port, nil
			}
		}
		return 0, fmt.Errorf("pod container %s: no host port published for %s", n.Host, p)
	}
	if n.AMQPPort, err = hostPort(brokerPort); err != nil {
		return err
	}
	n.AMQPAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(n.AMQPPort))
	n.URL = "amqp://guest:guest@" + n.AMQPAddr + "/"
	if r.be.opts.Sidecar != nil {
		if n.SidecarPort, err = hostPort(sidecarPort); err != nil {
			return err
		}
		n.SidecarAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(n.SidecarPort))
		n.SidecarURL = "amqp://guest:guest@" + n.SidecarAddr + "/"
	}
	if r.be.opts.Management {
		if n.MgmtPort, err = hostPort(mgmtPort); err != nil {
			return err
		}
		n.MgmtURL = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(n.MgmtPort))
	}
	return nil
}

// brokerConfig is the broker's rabbitmq.conf. guest may log in from
// anywhere: clients come through docker's port forwarding, not loopback.
func (r *dockerNode) brokerConfig() string {
	var b strings.Builder
	b.WriteString("# written by mirrorproxy testenv\n")
	b.WriteString("loopback_users = none\n")
	// guest is also the sidecars' broker user: a mirror republishes a
	// client's message with its user-id property, which RabbitMQ accepts
	// only from a user tagged impersonator (docs/REPLICATION.md).
	b.WriteString("default_user_tags.administrator = true\ndefault_user_tags.impersonator = true\n")
	b.WriteString("listeners.tcp.default = " + brokerPort + "\n")
	b.WriteString("log.console = true\nlog.console.level = info\nlog.file = false\n")
	b.WriteString("disk_free_limit.absolute = 50MB\n")
	if r.be.opts.Management {
		b.WriteString("management.tcp.port = " + mgmtPort + "\n")
	}
	if c := strings.TrimSpace(r.be.opts.Config); c != "" {
		b.WriteString("# from Options.Config\n" + c + "\n")
	}
	return b.String()
}

func (r *dockerNode) createBroker(ctx context.Context) error {
	n := r.n
	plugins := "[].\n"
	if r.be.opts.Management {
		plugins = "[rabbitmq_management].\n"
	}
	pod, _, _ := r.ids()
	env := map[string]string{
		"PATH":                          brokerPath,
		"HOME":                          "/var/lib/rabbitmq",
		"LANG":                          "C.UTF-8",
		"RABBITMQ_NODENAME":             n.Name,
		"RABBITMQ_CONFIG_FILE":          confDir + "/rabbitmq.conf",
		"RABBITMQ_ENABLED_PLUGINS_FILE": confDir + "/enabled_plugins",
		"RABBITMQ_LOGS":                 "-",
		// Exec the VM in place of the script (see localnode_linux.go), so
		// docker stop's SIGTERM reaches it through docker-init.
		"detached": "1",
	}
	if a := strings.TrimSpace(r.be.opts.ErlArgs); a != "" {
		env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = a
	}
	c, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: testcontainers.ContainerRequest{
			Image:      r.be.images.broker,
			Name:       n.Host + "-broker",
			Entrypoint: []string{"rabbitmq-server"},
			Cmd:        []string{},
			Env:        env,
			Labels:     r.labels("broker"),
			Files: []testcontainers.ContainerFile{
				{Reader: strings.NewReader(r.brokerConfig()), ContainerFilePath: confDir + "/rabbitmq.conf", FileMode: 0o644},
				{Reader: strings.NewReader(plugins), ContainerFilePath: confDir + "/enabled_plugins", FileMode: 0o644},
			},
			ConfigModifier: func(cfg *container.Config) {
				cfg.User = "rabbitmq"
				cfg.WorkingDir = "/var/lib/rabbitmq"
			},
			HostConfigModifier: func(hc *container.HostConfig) {
				hc.Init = new(true)
				hc.NetworkMode = container.NetworkMode("container:" + pod)
			},
		},
		Started: true,
		Logger:  tcLogger(r.be.opts.Logger),
	})
	if c != nil {
		r.mu.Lock()
		r.broker = c.GetContainerID()
		r.mu.Unlock()
	}
	if err != nil {
		return fmt.Errorf("create broker container: %w", err)
	}
	return nil
}

func (r *dockerNode) createSidecar(ctx context.Context) error {
	sc := r.be.opts.Sidecar
	pod, _, _ := r.ids()
	cmd := append([]string{"run", "--listen", "0.0.0.0:" + sidecarPort, "--upstream", "127.0.0.1:" + brokerPort}, sc.Args...)
	c, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: testcontainers.ContainerRequest{
			Image:  r.be.images.sidecar,
			Name:   r.n.Host + "-sidecar",
			Cmd:    cmd,
			Labels: r.labels("sidecar"),
			HostConfigModifier: func(hc *container.HostConfig) {
				hc.NetworkMode = container.NetworkMode("container:" + pod)
			},
		},
		Started: true,
		Logger:  tcLogger(r.be.opts.Logger),
	})
	if c != nil {
		r.mu.Lock()
		r.sidecar = c.GetContainerID()
		r.mu.Unlock()
	}
	if err != nil {
		return fmt.Errorf("create sidecar container: %w", err)
	}
	return nil
}

// waitBroker polls until the broker's published port answers AMQP and
// `rabbitmqctl await_startup` succeeds, or its container exits.
func (r *dockerNode) waitBroker(ctx context.Context) error {
	_, broker, _ := r.ids()
	began := time.Now()
	tick := time.NewTicker(backend.PollInterval)
	defer tick.Stop()
	exited := func() error {
		return r.startError(fmt.Errorf("broker container exited after %.1fs (%s)", time.Since(began).Seconds(), r.exitStatus(broker)))
	}
	// docker-proxy accepts on the host port even while nothing listens
	// inside, so only an AMQP answer counts.
	for !backend.AMQPAnswers(ctx, r.n.AMQPAddr, "") {
		if !r.containerRunning(broker) {
			return exited()
		}
		select {
		case <-ctx.Done():
			return r.startError(fmt.Errorf("AMQP port %s not answering after %.1fs: %w", r.n.AMQPAddr, time.Since(began).Seconds(), ctx.Err()))
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
		if !r.containerRunning(broker) {
			return exited()
		}
		select {
		case <-ctx.Done():
			return r.startError(fmt.Errorf("await_startup did not succeed after %.1fs: %w (last: %v)", time.Since(began).Seconds(), ctx.Err(), lastErr))
		case <-tick.C:
		}
	}
}

// waitSidecar polls until the sidecar's published port answers AMQP (it
// carries the protocol header to the broker and back).
func (r *dockerNode) waitSidecar(ctx context.Context) error {
	_, _, sidecar := r.ids()
	began := time.Now()
	tick := time.NewTicker(backend.PollInterval)
	defer tick.Stop()
	for !backend.AMQPAnswers(ctx, r.n.SidecarAddr, "") {
		if !r.containerRunning(sidecar) {
			return r.startError(fmt.Errorf("sidecar container exited after %.1fs (%s)", time.Since(began).Seconds(), r.exitStatus(sidecar)))
		}
		select {
		case <-ctx.Done():
			return r.startError(fmt.Errorf("sidecar port %s not answering after %.1fs: %w", r.n.SidecarAddr, time.Since(began).Seconds(), ctx.Err()))
		case <-tick.C:
		}
	}
	return nil
}

func (r *dockerNode) startError(err error) error {
	return &testenv.StartError{Node: r.n.Name, Err: err, LogTail: r.LogTail(backend.LogTailLines)}
}

// inspect returns the container's state; ok is false when it is gone or
// the engine does not answer.
func (r *dockerNode) inspect(id string) (st *container.State, ok bool) {
	if id == "" {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := r.be.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil || info.Container.State == nil {
		return nil, false
	}
	return info.Container.State, true
}

func (r *dockerNode) containerRunning(id string) bool {
	st, ok := r.inspect(id)
	return ok && st.Running
}

func (r *dockerNode) exitStatus(id string) string {
	st, ok := r.inspect(id)
	if !ok {
		return "container gone"
	}
	s := fmt.Sprintf("status %s, exit code %d", st.Status, st.ExitCode)
	if st.OOMKilled {
		s += ", killed for lack of memory"
	}
	if st.Error != "" {
		s += ", " + st.Error
	}
	return s
}

func (r *dockerNode) Running() bool {
	_, broker, _ := r.ids()
	return r.containerRunning(broker)
}

func (r *dockerNode) SidecarRunning() bool {
	_, _, sidecar := r.ids()
	return r.containerRunning(sidecar)
}

// stopContainer is `docker stop`: SIGTERM, then SIGKILL once ctx's
// deadline (or 30s) passed; it returns once the container is down.
func (r *dockerNode) stopContainer(ctx context.Context, id, what string) error {
	if id == "" || !r.containerRunning(id) {
		return nil
	}
	grace := 30
	if dl, ok := ctx.Deadline(); ok {
		grace = max(1, int(time.Until(dl).Seconds())-2)
	}
	// The engine kills after the grace period; give the call room for it.
	callCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Duration(grace)*time.Second+backend.GoneTimeout)
	defer cancel()
	if _, err := r.be.cli.ContainerStop(callCtx, id, client.ContainerStopOptions{Timeout: &grace}); err != nil {
		return fmt.Errorf("testenv: stop %s of %s: %w", what, r.n.Name, err)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("testenv: graceful stop of %s of %s did not finish: %w; it was killed", what, r.n.Name, ctx.Err())
	}
	return nil
}

// killContainer is `docker kill` (SIGKILL to its init, so to every
// process in it); it returns once the container is down.
func (r *dockerNode) killContainer(id, what string) error {
	if id == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), backend.GoneTimeout)
	defer cancel()
	if _, err := r.be.cli.ContainerKill(ctx, id, client.ContainerKillOptions{Signal: "KILL"}); err != nil &&
		!errdefs.IsNotFound(err) && !errdefs.IsConflict(err) && !strings.Contains(err.Error(), "is not running") {
		return fmt.Errorf("testenv: kill %s of %s: %w", what, r.n.Name, err)
	}
	tick := time.NewTicker(backend.PollInterval)
	defer tick.Stop()
	for {
		st, ok := r.inspect(id)
		if !ok || !st.Running {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testenv: %s of %s still running %v after SIGKILL", what, r.n.Name, backend.GoneTimeout)
		case <-tick.C:
		}
	}
}

func (r *dockerNode) Stop(ctx context.Context) error {
	_, broker, _ := r.ids()
	return r.stopContainer(ctx, broker, "broker")
}

func (r *dockerNode) Kill() error {
	_, broker, _ := r.ids()
	return r.killContainer(broker, "broker")
}

func (r *dockerNode) SidecarStart(ctx context.Context) error {
	_, _, sidecar := r.ids()
	if sidecar == "" {
		return fmt.Errorf("testenv: node %s: its sidecar was never started", r.n.Name)
	}
	if r.containerRunning(sidecar) {
		return fmt.Errorf("testenv: the sidecar of %s is already running", r.n.Name)
	}
	if _, err := r.be.cli.ContainerStart(ctx, sidecar, client.ContainerStartOptions{}); err != nil {
		return r.startError(fmt.Errorf("start sidecar container: %w", err))
	}
	return r.waitSidecar(ctx)
}

func (r *dockerNode) SidecarStop(ctx context.Context) error {
	_, _, sidecar := r.ids()
	return r.stopContainer(ctx, sidecar, "sidecar")
}

func (r *dockerNode) SidecarKill() error {
	_, _, sidecar := r.ids()
	return r.killContainer(sidecar, "sidecar")
}

// Pause freezes (docker pause) or thaws the broker container;
// SidecarPause the sidecar's.
func (r *dockerNode) Pause(on bool) error {
	_, broker, _ := r.ids()
	return r.pause(broker, "broker", on)
}

func (r *dockerNode) SidecarPause(on bool) error {
	_, _, sidecar := r.ids()
	return r.pause(sidecar, "sidecar", on)
}

func (r *dockerNode) pause(id, what string, on bool) error {
	if id == "" {
		return fmt.Errorf("testenv: pause the %s of %s: not started", what, r.n.Name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	if on {
		_, err = r.be.cli.ContainerPause(ctx, id, client.ContainerPauseOptions{})
	} else {
		_, err = r.be.cli.ContainerUnpause(ctx, id, client.ContainerUnpauseOptions{})
	}
	if err != nil {
		verb := map[bool]string{true: "pause", false: "unpause"}[on]
		return fmt.Errorf("testenv: %s the %s of %s: %w", verb, what, r.n.Name, err)
	}
	return nil
}

// partition disconnects the pod from the group network (cut) or connects
// it again under its host name.
func (r *dockerNode) Partition(ctx context.Context, cut bool) error {
	pod, _, _ := r.ids()
	info, err := r.be.cli.ContainerInspect(ctx, pod, client.ContainerInspectOptions{})
	if err != nil {
		return fmt.Errorf("testenv: partition %s: inspect its pod: %w", r.n.Name, err)
	}
	_, connected := info.Container.NetworkSettings.Networks[r.be.netName]
	switch {
	case cut && connected:
		if _, err := r.be.cli.NetworkDisconnect(ctx, r.be.netID, client.NetworkDisconnectOptions{Container: pod}); err != nil {
			return fmt.Errorf("testenv: partition %s: disconnect from %s: %w", r.n.Name, r.be.netName, err)
		}
	case !cut && !connected:
		if _, err := r.be.cli.NetworkConnect(ctx, r.be.netID, client.NetworkConnectOptions{
			Container:      pod,
			EndpointConfig: &network.EndpointSettings{Aliases: []string{r.n.Host}},
		}); err != nil {
			return fmt.Errorf("testenv: heal %s: connect to %s: %w", r.n.Name, r.be.netName, err)
		}
	}
	return nil
}

// close removes the node's containers (sidecar and broker before the pod
// whose namespace they share). With KeepDirs they are only killed, for
// inspection; Cleanup removes them once this process is gone.
func (r *dockerNode) Close() error {
	pod, broker, sidecar := r.ids()
	var errs []error
	for _, c := range []struct{ id, what string }{{sidecar, "sidecar"}, {broker, "broker"}, {pod, "pod"}} {
		if c.id == "" {
			continue
		}
		if r.be.opts.KeepDirs {
			errs = append(errs, r.killContainer(c.id, c.what))
			continue
		}
		errs = append(errs, r.removeContainer(c.id, c.what))
	}
	return errors.Join(errs...)
}

func (r *dockerNode) removeContainer(id, what string) error {
	ctx, cancel := context.WithTimeout(context.Background(), backend.GoneTimeout)
	defer cancel()
	if _, err := r.be.cli.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("testenv: remove the %s container of %s: %w", what, r.n.Name, err)
	}
	return nil
}

func (r *dockerNode) EmergencyKill() {
	if !r.be.opts.KeepDirs {
		_ = r.Close()
	}
}

func (r *dockerNode) Ctl(ctx context.Context, args ...string) (string, error) {
	out, err := r.Exec(ctx, append([]string{"rabbitmqctl", "-n", r.n.Name}, args...)...)
	if err != nil {
		return out, fmt.Errorf("testenv: rabbitmqctl -n %s %s: %w", r.n.Name, strings.Join(args, " "), err)
	}
	return out, nil
}

func (r *dockerNode) Exec(ctx context.Context, args ...string) (string, error) {
	_, broker, _ := r.ids()
	if broker == "" {
		return "", fmt.Errorf("testenv: exec on %s: the broker container was never created", r.n.Name)
	}
	cli := r.be.cli
	fail := func(err error) (string, error) {
		return "", fmt.Errorf("exec %s in %s: %w", strings.Join(args, " "), r.n.Host, err)
	}
	cr, err := cli.ExecCreate(ctx, broker, client.ExecCreateOptions{
		User: "rabbitmq", AttachStdout: true, AttachStderr: true, Cmd: args,
		Env: []string{"PATH=" + brokerPath, "HOME=/var/lib/rabbitmq", "LANG=C.UTF-8"},
	})
	if err != nil {
		return fail(err)
	}
	at, err := cli.ExecAttach(ctx, cr.ID, client.ExecAttachOptions{})
	if err != nil {
		return fail(err)
	}
	defer at.Close()
	// The stream ends when the command does; ctx ends it earlier.
	stop := context.AfterFunc(ctx, at.Close)
	defer stop()
	var b bytes.Buffer
	w := &limitWriter{w: &b, n: logBytes}
	_, err = stdcopy.StdCopy(w, w, at.Reader)
	if ctx.Err() != nil {
		return b.String(), fmt.Errorf("exec %s in %s: %w", strings.Join(args, " "), r.n.Host, ctx.Err())
	}
	if err != nil && !errors.Is(err, errLimit) {
		return fail(err)
	}
	// The engine marks the exec done a moment after closing the stream.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ins, err := cli.ExecInspect(ctx, cr.ID, client.ExecInspectOptions{})
		if err != nil {
			return fail(err)
		}
		if !ins.Running {
			if ins.ExitCode != 0 {
				return b.String(), fmt.Errorf("exit code %d: %s", ins.ExitCode, strings.TrimSpace(b.String()))
			}
			return b.String(), nil
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-tick.C:
		}
	}
}

// containerLogs returns the container's stdout and stderr, interleaved;
// tail > 0 keeps only the last tail lines.
func (r *dockerNode) containerLogs(id string, tail int) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts := client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true}
	if tail > 0 {
		opts.Tail = strconv.Itoa(tail)
	}
	rc, err := r.be.cli.ContainerLogs(ctx, id, opts)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	var b bytes.Buffer
	w := &limitWriter{w: &b, n: logBytes}
	if _, err := stdcopy.StdCopy(w, w, rc); err != nil && !errors.Is(err, errLimit) {
		return b.String(), err
	}
	return b.String(), nil
}

func (r *dockerNode) LogTail(lines int) string {
	var b strings.Builder
	_, broker, sidecar := r.ids()
	for _, c := range []struct{ id, what string }{{broker, "broker"}, {sidecar, "sidecar"}} {
		if c.id == "" {
			continue
		}
		out, err := r.containerLogs(c.id, lines)
		if err != nil {
			fmt.Fprintf(&b, "--- logs of the %s container of %s: %v ---\n", c.what, r.n.Name, err)
			continue
		}
		fmt.Fprintf(&b, "--- last lines of the %s container of %s (%s) ---\n%s", c.what, r.n.Name, r.exitStatus(c.id), out)
		if out != "" && !strings.HasSuffix(out, "\n") {
			b.WriteString("\n")
		}
	}
	return b.String()
}

// failureLogs gives a failed test the logs of every container of the
// node: whole when short, else the first and last lines.
func (r *dockerNode) FailureLogs() string {
	var b strings.Builder
	pod, broker, sidecar := r.ids()
	fmt.Fprintf(&b, "logs of %s (host %s, broker %s, sidecar %s):\n", r.n.Name, r.n.Host, r.n.AMQPAddr, r.n.SidecarAddr)
	for _, c := range []struct{ id, what string }{{pod, "pod"}, {broker, "broker"}, {sidecar, "sidecar"}} {
		if c.id == "" {
			continue
		}
		out, err := r.containerLogs(c.id, 0)
		if err != nil {
			fmt.Fprintf(&b, "--- %s container: logs unreadable: %v ---\n", c.what, err)
			continue
		}
		fmt.Fprintf(&b, "--- %s container %s (%s) ---\n%s", c.what, c.id[:12], r.exitStatus(c.id), backend.HeadTail(out, 40, 160))
		if out != "" && !strings.HasSuffix(out, "\n") {
			b.WriteString("\n")
		}
	}
	return b.String()
}

// logBytes bounds what is kept of a container's logs or an exec's output.
const logBytes = 256 << 10

var errLimit = errors.New("log limit reached")

// limitWriter keeps at most n bytes.
type limitWriter struct {
	w io.Writer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errLimit
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	m, err := l.w.Write(p)
	l.n -= m
	if err == nil && l.n <= 0 {
		err = errLimit
	}
	return m, err
}

func (r *dockerNode) SidecarLogTail(lines int) string {
	_, _, sidecar := r.ids()
	if sidecar == "" {
		return ""
	}
	out, err := r.containerLogs(sidecar, lines)
	if err != nil {
		return fmt.Sprintf("--- logs of the sidecar container of %s: %v ---\n", r.n.Name, err)
	}
	return fmt.Sprintf("--- last lines of the sidecar container of %s ---\n%s", r.n.Name, out)
}
