// Package docker is testenv's docker backend: it runs each node of a
// testenv group in containers through testcontainers-go (a pod container
// owning the network namespace, a broker and, with Options.Sidecar, a
// mirrorproxy sidecar), on a private network made for the group, and
// builds its images without a registry (images.go).
//
// Importing it registers the backend "docker" with testenv
// (testenv.RegisterBackend); then testenv.Options{Backend:
// testenv.BackendDocker} or MIRRORPROXY_TESTENV=docker picks it:
//
//	import _ "github.com/mirrorproxy/mirrorproxy/testenv/docker"
//
// It is a package of its own so that programs which never run containers
// (the mirrorproxy binary's demo and bench use the local backend) link no
// container client. Available says whether a Docker engine answers;
// Cleanup removes what killed test processes left. See docs/TESTENV.md.
package docker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"

	"github.com/mirrorproxy/mirrorproxy/testenv"
	"github.com/mirrorproxy/mirrorproxy/testenv/internal/backend"
)

// The docker backend runs each node as three containers, the Kubernetes
// pod pattern:
//
//	pod      "sleep infinity" under docker-init. It owns the node's network
//	         namespace: host name, the published ports (127.0.0.1, random)
//	         and the two networks below. It is never hurt by a fault.
//	broker   rabbitmq-server, --network container:<pod>
//	sidecar  mirrorproxy run, --network container:<pod> (Options.Sidecar)
//
// So broker and sidecar share one network namespace (the sidecar reaches
// the broker on 127.0.0.1:5672), and killing, stopping or restarting one
// of them leaves the other reachable on the same addresses.
//
// Networks: the pod is created on Docker's default bridge, which carries
// the published host ports, and then connected to the group's private
// network "mpt-<id>" under its host name. The group network is internal:
// it is never the pod's gateway, so Docker never publishes ports through
// it, and Partition can disconnect the pod from it (peers cannot reach it
// nor it them: the group's host names resolve only on that network) while
// the node still answers on its published ports.
//
// Everything the backend makes carries the labels below; Close removes
// it, the signal watcher removes it on SIGINT/SIGTERM, and the next
// StartGroup (or Cleanup) removes what a dead process left. Ryuk,
// testcontainers' own reaper, cannot be pulled here: the backend sets
// TESTCONTAINERS_RYUK_DISABLED=true unless it is set.

// Labels on every container and network of the docker backend.
const (
	labelGroup = "io.mirrorproxy.testenv.group" // the group ID
	labelOwner = "io.mirrorproxy.testenv.owner" // "<pid>:<start time>" of the process that made it
	labelHost  = "io.mirrorproxy.testenv.host"  // host name of that process's machine
	labelRole  = "io.mirrorproxy.testenv.role"  // pod, broker, sidecar
)

// Ports inside a node's network namespace.
const (
	brokerPort  = "5672"
	sidecarPort = "5673"
	mgmtPort    = "15672"
)

// brokerPath is searched for rabbitmq-server and rabbitmqctl: the real
// scripts of the Debian package first (its /usr/sbin ones switch user),
// then the official image's.
const brokerPath = "/usr/lib/rabbitmq/bin:/opt/rabbitmq/sbin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// confDir holds the files testenv writes into the broker container.
const confDir = "/etc/mirrorproxy-testenv"

// EnvRyukDisabled is testcontainers' setting that turns its reaper off.
const EnvRyukDisabled = "TESTCONTAINERS_RYUK_DISABLED"

// ErrNoEngine wraps the error of a Docker engine that does not answer.
var ErrNoEngine = errors.New("testenv: no Docker engine answers")

type dockerBackend struct {
	opts     testenv.Options
	provider *testcontainers.DockerProvider
	cli      client.APIClient
	owner    string
	host     string
	labels   map[string]string // common labels of the group
	netName  string
	netID    string
	images   struct{ broker, sidecar string }
}

// tcEnv sets testcontainers' settings testenv relies on; it must run
// before testcontainers reads its configuration (once per process).
func tcEnv() {
	if _, ok := os.LookupEnv(EnvRyukDisabled); !ok {
		os.Setenv(EnvRyukDisabled, "true")
	}
}

// newDockerClient connects to the Docker engine the way testcontainers
// does (DOCKER_HOST, docker contexts, ~/.testcontainers.properties).
func newDockerClient(ctx context.Context) (*client.Client, error) {
	tcEnv()
	c, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoEngine, err)
	}
	return c.Client, nil
}

// Available reports, as an error, why the docker backend cannot run
// here: nil when a Docker engine answers a ping.
func Available(ctx context.Context) error {
	tcEnv()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cli, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoEngine, err)
	}
	defer cli.Close()
	if _, err := cli.Ping(ctx, client.PingOptions{}); err != nil {
		return fmt.Errorf("%w: %v", ErrNoEngine, err)
	}
	return nil
}

func init() { testenv.RegisterBackend(testenv.BackendDocker, newDockerBackend) }

// fakeOwner replaces the "<pid>:<start time>" owner mark of the groups
// started while it is set (tests only, never concurrently with a start:
// makes a group look orphaned to Cleanup).
var fakeOwner string

func newDockerBackend(opts testenv.Options) (testenv.Driver, error) {
	tcEnv()
	owner, err := backend.SelfOwner()
	if err != nil {
		return nil, err
	}
	if fakeOwner != "" {
		owner = fakeOwner
	}
	host, _ := os.Hostname()
	p, err := testcontainers.NewDockerProvider(testcontainers.WithLogger(tcLogger(opts.Logger)))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoEngine, err)
	}
	return &dockerBackend{opts: opts, provider: p, cli: p.Client(), owner: owner, host: host}, nil
}

// tcLogger sends testcontainers' lines about failures to Options.Logger;
// its routine lines (five per container: creating, created, starting,
// started, ready) would drown testenv's own.
type tcLogger func(string, ...any)

func (l tcLogger) Printf(format string, args ...any) {
	line := fmt.Sprintf(strings.TrimRight(format, "\n"), args...)
	lower := strings.ToLower(line)
	if strings.Contains(lower, "fail") || strings.Contains(lower, "error") {
		l("testcontainers: %s", line)
	}
}

func (be *dockerBackend) Setup(ctx context.Context, g *testenv.Group) error {
	if _, err := be.cli.Ping(ctx, client.PingOptions{}); err != nil {
		be.provider.Close()
		return fmt.Errorf("%w: %v", ErrNoEngine, err)
	}
	if removed, err := cleanupDocker(ctx, be.cli); err != nil {
		be.opts.Logger("testenv: removing what dead test processes left: %v", err)
	} else if len(removed) > 0 {
		be.opts.Logger("testenv: removed %d container(s)/network(s) of dead test processes", len(removed))
	}
	if err := be.ensureImages(ctx); err != nil {
		be.provider.Close()
		return err
	}
	g.ID = backend.RandomHex(4)
	be.netName = "mpt-" + g.ID
	be.labels = map[string]string{labelGroup: g.ID, labelOwner: be.owner, labelHost: be.host}
	res, err := be.cli.NetworkCreate(ctx, be.netName, client.NetworkCreateOptions{
		Driver:   "bridge",
		Internal: true,
		Labels:   be.labels,
	})
	if err != nil {
		be.provider.Close()
		return fmt.Errorf("testenv: create network %s: %w", be.netName, err)
	}
	be.netID = res.ID
	return nil
}

func (be *dockerBackend) ensureImages(ctx context.Context) error {
	be.images.broker = be.opts.BrokerImage
	if be.images.broker == "" {
		b, err := EnsureBrokerImage(ctx, be.opts.Logger)
		if err != nil {
			return err
		}
		be.images.broker = b.Image
	} else if err := be.imagePresent(ctx, be.images.broker); err != nil {
		return err
	}
	if sc := be.opts.Sidecar; sc != nil {
		be.images.sidecar = sc.Image
		if be.images.sidecar == "" {
			b, err := EnsureSidecarImage(ctx, sc.Binary, be.opts.Logger)
			if err != nil {
				return err
			}
			be.images.sidecar = b.Image
		} else if err := be.imagePresent(ctx, be.images.sidecar); err != nil {
			return err
		}
	}
	return nil
}

// imagePresent checks a user-named image; testcontainers would try to
// pull a missing one, which here fails slowly with an unclear error.
func (be *dockerBackend) imagePresent(ctx context.Context, ref string) error {
	if _, err := be.cli.ImageInspect(ctx, ref); err != nil {
		if errdefs.IsNotFound(err) {
			return fmt.Errorf("testenv: image %s is not on this Docker engine (pull or load it first; no registry is assumed)", ref)
		}
		return fmt.Errorf("testenv: inspect image %s: %w", ref, err)
	}
	return nil
}

func (be *dockerBackend) NewNode(g *testenv.Group, n *testenv.Node) (testenv.NodeDriver, error) {
	n.Host = fmt.Sprintf("mpt-%s-%d", g.ID, n.Index)
	n.Name = "rabbit@" + n.Host
	return &dockerNode{be: be, g: g, n: n}, nil
}

func (be *dockerBackend) Teardown(g *testenv.Group, keep bool) error {
	defer be.provider.Close()
	if be.netID == "" || be.opts.KeepDirs {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := be.cli.NetworkRemove(ctx, be.netID, client.NetworkRemoveOptions{}); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("testenv: remove network %s: %w", be.netName, err)
	}
	return nil
}

// Cleanup removes the containers and networks of testenv groups
// whose owner process (on this machine) is gone: groups of crashed or
// killed test processes, and groups kept with KeepDirs. Groups of live
// processes are left alone. It returns the names of what it removed.
func Cleanup(ctx context.Context) ([]string, error) {
	cli, err := newDockerClient(ctx)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	return cleanupDocker(ctx, cli)
}

func cleanupDocker(ctx context.Context, cli client.APIClient) ([]string, error) {
	host, _ := os.Hostname()
	stale := func(labels map[string]string) bool {
		return labels[labelHost] == host && !backend.OwnerAlive(labels[labelOwner])
	}
	var removed []string
	var errs []error
	cs, err := cli.ContainerList(ctx, client.ContainerListOptions{
		All: true, Filters: make(client.Filters).Add("label", labelGroup),
	})
	if err != nil {
		return nil, fmt.Errorf("testenv: list containers: %w", err)
	}
	// Sidecars and brokers before the pods whose namespace they use.
	for _, role := range []string{"sidecar", "broker", "pod"} {
		for _, c := range cs.Items {
			if c.Labels[labelRole] != role || !stale(c.Labels) {
				continue
			}
			if _, err := cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("remove container %s: %w", c.ID[:12], err))
				continue
			}
			removed = append(removed, "container "+strings.TrimPrefix(firstOr(c.Names, c.ID[:12]), "/"))
		}
	}
	ns, err := cli.NetworkList(ctx, client.NetworkListOptions{Filters: make(client.Filters).Add("label", labelGroup)})
	if err != nil {
		return removed, errors.Join(append(errs, fmt.Errorf("testenv: list networks: %w", err))...)
	}
	for _, nw := range ns.Items {
		if !stale(nw.Labels) {
			continue
		}
		if _, err := cli.NetworkRemove(ctx, nw.ID, client.NetworkRemoveOptions{}); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove network %s: %w", nw.Name, err))
			continue
		}
		removed = append(removed, "network "+nw.Name)
	}
	if len(errs) > 0 {
		return removed, fmt.Errorf("testenv: docker cleanup: %w", errors.Join(errs...))
	}
	return removed, nil
}

func firstOr(s []string, def string) string {
	if len(s) > 0 {
		return s[0]
	}
	return def
}
