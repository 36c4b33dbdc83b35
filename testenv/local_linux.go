package testenv

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Directory layout of a group (local backend):
//
//	$TMPDIR/mirrorproxy-testenv-<id>/
//	  owner                 "<pid>:<start time>" of the process that made it
//	  home/.erlang.cookie   shared by the brokers and rabbitmqctl (HOME)
//	  n<i>/rabbitmq.conf    written on every start
//	  n<i>/enabled_plugins
//	  n<i>/mnesia/          RABBITMQ_MNESIA_BASE (Node.DataDir)
//	  n<i>/log/             RABBITMQ_LOG_BASE (Node.LogDir): <node>.log, console.log
//
// Every broker's command line carries "-mirrorproxy_testenv <group dir>
// -mirrorproxy_testenv_owner <pid>:<start time>" (Erlang user flags the VM
// ignores), so Cleanup can find brokers whose owner died, even when their
// directory is gone.

const (
	dirPrefix       = "mirrorproxy-testenv-"
	markerFlag      = "-mirrorproxy_testenv"
	markerOwnerFlag = "-mirrorproxy_testenv_owner"
	ownerFile       = "owner"
)

// EnvRabbitMQBin names a directory holding the real rabbitmq-server and
// rabbitmqctl scripts, overriding the search (see findScripts).
const EnvRabbitMQBin = "MIRRORPROXY_RABBITMQ_BIN"

type localBackend struct {
	opts       Options
	serverPath string
	ctlPath    string
	// cred runs brokers and rabbitmqctl as user rabbitmq when we are root;
	// nil otherwise. uid/gid own the created files (-1: leave as is).
	cred     *syscall.Credential
	uid, gid int
	home     string
	owner    string // "<pid>:<start time>" of this process
	// sidecarBin is the mirrorproxy binary for sidecars (Options.Sidecar).
	sidecarBin string
	// pickPorts returns n distinct free loopback ports.
	pickPorts func(n int) ([]int, error)
}

func newLocalBackend(opts Options) (Driver, error) {
	server, ctl, err := findScripts()
	if err != nil {
		return nil, err
	}
	be := &localBackend{opts: opts, serverPath: server, ctlPath: ctl, uid: -1, gid: -1, pickPorts: freePorts}
	if opts.portPicker != nil {
		be.pickPorts = opts.portPicker
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("rabbitmq")
		if err != nil {
			return nil, fmt.Errorf("testenv: running as root, brokers run as user rabbitmq, but looking it up failed (the rabbitmq-server package creates it): %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		be.uid, be.gid = uid, gid
		be.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	}
	return be, nil
}

// findScripts finds the rabbitmq-server and rabbitmqctl scripts to run
// directly. On Debian /usr/sbin/rabbitmq-server is a wrapper that switches
// user with su and sends output to /var/log; the real scripts live in
// /usr/lib/rabbitmq/bin. EnvRabbitMQBin overrides both.
func findScripts() (server, ctl string, err error) {
	dirs := []string{}
	if d := os.Getenv(EnvRabbitMQBin); d != "" {
		dirs = append(dirs, d)
	} else {
		dirs = append(dirs, "/usr/lib/rabbitmq/bin")
		if p, err := exec.LookPath("rabbitmq-server"); err == nil {
			if target, err := filepath.EvalSymlinks(p); err == nil {
				p = target
			}
			dirs = append(dirs, filepath.Dir(p))
		}
	}
	for _, d := range dirs {
		s, c := filepath.Join(d, "rabbitmq-server"), filepath.Join(d, "rabbitmqctl")
		if isExecutable(s) && isExecutable(c) {
			return s, c, nil
		}
	}
	if d := os.Getenv(EnvRabbitMQBin); d != "" {
		return "", "", fmt.Errorf("%w (looked in %s=%s)", ErrNotInstalled, EnvRabbitMQBin, d)
	}
	return "", "", ErrNotInstalled
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

func (be *localBackend) Setup(ctx context.Context, g *Group) error {
	tmp := os.TempDir()
	if strings.ContainsAny(tmp, " \t\n'\"\\") {
		// The RabbitMQ scripts split some variables on spaces.
		return fmt.Errorf("testenv: temporary directory %q contains spaces or quotes, which the RabbitMQ scripts cannot handle; set TMPDIR to a plain path", tmp)
	}
	for {
		g.ID = randomHex(4)
		g.Dir = filepath.Join(tmp, dirPrefix+g.ID)
		err := os.Mkdir(g.Dir, 0o700)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("testenv: create group directory: %w", err)
		}
	}
	fail := func(err error) error {
		_ = os.RemoveAll(g.Dir)
		return err
	}
	owner, err := selfOwner()
	if err != nil {
		return fail(err)
	}
	be.owner = owner
	if be.opts.fakeOwner != "" {
		be.owner = be.opts.fakeOwner
	}
	if err := be.writeFile(filepath.Join(g.Dir, ownerFile), be.owner+"\n", 0o644); err != nil {
		return fail(err)
	}
	be.home = filepath.Join(g.Dir, "home")
	if err := be.mkdir(be.home); err != nil {
		return fail(err)
	}
	// Erlang wants the cookie readable by its owner only.
	cookie := strings.ToUpper(randomHex(16))
	if err := be.writeFile(filepath.Join(be.home, ".erlang.cookie"), cookie, 0o400); err != nil {
		return fail(err)
	}
	if err := be.chown(g.Dir); err != nil {
		return fail(err)
	}
	if sc := be.opts.Sidecar; sc != nil {
		be.sidecarBin = sc.Binary
		if be.sidecarBin != "" {
			if _, err := os.Stat(be.sidecarBin); err != nil {
				return fail(fmt.Errorf("testenv: SidecarOptions.Binary: %w", err))
			}
		} else {
			// Built per group into its directory (removed with it); the go
			// command's cache makes this a link step.
			be.sidecarBin = filepath.Join(g.Dir, "bin", "mirrorproxy")
			if err := buildSidecarBinary(ctx, be.sidecarBin); err != nil {
				return fail(err)
			}
		}
	}
	return nil
}

func (be *localBackend) NewNode(g *Group, n *Node) (NodeDriver, error) {
	dir := filepath.Join(g.Dir, "n"+strconv.Itoa(n.Index))
	n.Name = fmt.Sprintf("mpt-%s-%d@localhost", g.ID, n.Index)
	n.DataDir = filepath.Join(dir, "mnesia")
	n.LogDir = filepath.Join(dir, "log")
	n.LogFile = filepath.Join(n.LogDir, n.Name+".log")
	n.ConsoleLog = filepath.Join(n.LogDir, "console.log")
	for _, d := range []string{dir, n.DataDir, n.LogDir} {
		if err := be.mkdir(d); err != nil {
			return nil, err
		}
	}
	plugins := "[].\n"
	if be.opts.Management {
		plugins = "[rabbitmq_management].\n"
	}
	if err := be.writeFile(filepath.Join(dir, "enabled_plugins"), plugins, 0o644); err != nil {
		return nil, err
	}
	return &localNode{be: be, g: g, n: n, dir: dir}, nil
}

func (be *localBackend) Teardown(g *Group, keep bool) error {
	if keep || g.Dir == "" {
		return nil
	}
	if err := os.RemoveAll(g.Dir); err != nil {
		return fmt.Errorf("testenv: remove %s: %w", g.Dir, err)
	}
	return nil
}

func (be *localBackend) mkdir(d string) error {
	if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("testenv: create directory: %w", err)
	}
	return be.chown(d)
}

func (be *localBackend) writeFile(p, content string, mode os.FileMode) error {
	_ = os.Remove(p) // the cookie is read-only; rewrite it whole
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		return fmt.Errorf("testenv: write %s: %w", p, err)
	}
	return be.chown(p)
}

func (be *localBackend) chown(p string) error {
	if be.uid < 0 {
		return nil
	}
	if err := os.Lchown(p, be.uid, be.gid); err != nil {
		return fmt.Errorf("testenv: give %s to user rabbitmq: %w", p, err)
	}
	return nil
}

// baseEnv is the environment shared by the broker and rabbitmqctl. It is
// built from scratch so that RABBITMQ_* or ERL_* variables of the caller do
// not leak in, and /etc/rabbitmq is never read.
func (be *localBackend) baseEnv(nodeDir string) []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	return []string{
		"PATH=" + path,
		"HOME=" + be.home,
		"LANG=C.UTF-8",
		"LC_ALL=C.UTF-8",
		// A file that does not exist: skip /etc/rabbitmq/rabbitmq-env.conf.
		"RABBITMQ_CONF_ENV_FILE=" + filepath.Join(nodeDir, "rabbitmq-env.conf"),
		// rabbitmqctl listens for distribution on loopback, in a wider port
		// range than the default 11 ports (many CLIs may run at once).
		"RABBITMQ_CTL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
		"RABBITMQ_CTL_DIST_PORT_MIN=" + strconv.Itoa(ctlDistPortMin),
		"RABBITMQ_CTL_DIST_PORT_MAX=" + strconv.Itoa(ctlDistPortMax),
	}
}
