// Command testenv starts RabbitMQ brokers for demos and benchmarks, and
// removes what crashed test runs left behind.
//
//	go run ./testenv/cmd/testenv up -nodes 3 [-docker] [-sidecar] [-group] [-management] [-config extra.conf] [-keep]
//	go run ./testenv/cmd/testenv images [-sidecar-binary bin/mirrorproxy]
//	go run ./testenv/cmd/testenv cleanup
//	go run ./testenv/cmd/testenv --help
//
// `up` prints one line per broker and a line "BROKERS=url,url,..." (and
// "SIDECARS=..." with -sidecar; with -group also each node's member name,
// admin API URL and sidecar config file) and keeps them running until SIGINT or
// SIGTERM. `images` builds the docker backend's broker and sidecar images
// unless images of the same inputs exist, and prints what it did and how
// long it took (`make images`). `cleanup` kills brokers whose test process
// is gone and removes their directories (see testenv.Cleanup), and removes
// such groups' containers and networks when a Docker engine answers
// (docker.Cleanup); it leaves groups of running processes alone.
// `--help` prints every command and flag (exit 0); an unknown command or
// a bad flag is a usage error (exit 2).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/mirrorproxy/mirrorproxy/testenv"
	"github.com/mirrorproxy/mirrorproxy/testenv/docker"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// exitUsage is the exit status of a command line that names no command or
// has a bad flag, as Go's flag package uses.
const exitUsage = 2

// commands are testenv's commands, in the order help lists them.
var commands = []struct {
	name, args, usage string
	flags             func() *flag.FlagSet // nil: no flags
}{
	{"up", "[flags]", "start brokers (and sidecars) and keep them running until Ctrl-C; print their addresses", upFlags},
	{"images", "[flags]", "build the docker backend's broker and sidecar images unless images of the same inputs exist", imagesFlags},
	{"cleanup", "", "remove brokers, containers and networks left behind by killed test runs", nil},
}

// help writes the full help: every command with its flags.
func help(w io.Writer) {
	fmt.Fprint(w, `testenv starts RabbitMQ brokers (local rabbitmq-server processes, or Docker
containers) for the demo, benchmarks and trying mirrorproxy by hand.

Usage:
  go run ./testenv/cmd/testenv COMMAND [flags]

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.usage)
	}
	for _, c := range commands {
		if c.flags == nil {
			continue
		}
		fmt.Fprintf(w, "\nFlags of %s:\n", c.name)
		fs := c.flags()
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
	fmt.Fprint(w, `
Example: one broker on a free loopback port, printed as BROKERS=amqp://...
  go run ./testenv/cmd/testenv up -nodes 1
`)
}

// run runs the command line args (without the program name) and returns
// the exit status: 0, 1 when the command failed, 2 for a usage error.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		help(stderr)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "-h", "-help", "--help", "help":
		help(stdout)
		return 0
	case "up":
		err = up(args[1:], stdout, stderr)
	case "images":
		err = images(args[1:], stdout, stderr)
	case "cleanup":
		err = cleanup(stdout)
	default:
		var names []string
		for _, c := range commands {
			names = append(names, c.name)
		}
		fmt.Fprintf(stderr, "testenv: unknown command '%s'; the commands are: %s ('testenv --help' says more)\n", args[0], strings.Join(names, ", "))
		return exitUsage
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0 // the flag set printed its usage
	case errors.Is(err, errUsage):
		return exitUsage // the flag set printed the problem and its usage
	}
	fmt.Fprintln(stderr, "testenv:", err)
	return 1
}

// errUsage is returned for a bad flag, which the flag set has reported.
var errUsage = errors.New("usage")

// parse parses a command's flags; problems are printed on stderr by fs.
func parse(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "testenv %s takes no arguments, got %q\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
	return nil
}

func cleanup(stdout io.Writer) error {
	removed, err := testenv.Cleanup()
	if derr := docker.Available(context.Background()); derr == nil {
		more, cerr := docker.Cleanup(context.Background())
		removed = append(removed, more...)
		err = errors.Join(err, cerr)
	}
	for _, d := range removed {
		fmt.Fprintln(stdout, "removed", d)
	}
	if err == nil && len(removed) == 0 {
		fmt.Fprintln(stdout, "nothing to clean up")
	}
	return err
}

// upFlags are up's flags; upOptions reads them.
func upFlags() *flag.FlagSet {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	fs.Int("nodes", 3, "number of brokers")
	fs.Bool("docker", false, "run the nodes in containers (the docker backend)")
	fs.Bool("sidecar", false, "start a mirrorproxy sidecar beside each broker")
	fs.Bool("group", false, "make the sidecars one mirrored group (implies -sidecar; local backend; policy ha-all mirrors ^ha\\. queues on every node)")
	fs.Bool("management", false, "enable the management plugin")
	fs.String("config", "", "`file` with extra rabbitmq.conf lines")
	fs.Bool("keep", false, "keep data and log directories on exit")
	fs.Duration("timeout", testenv.DefaultStartTimeout, "start timeout")
	return fs
}

func imagesFlags() *flag.FlagSet {
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	fs.String("sidecar-binary", "", "static mirrorproxy `binary` for the sidecar image (default: go build ./cmd/mirrorproxy)")
	return fs
}

func up(args []string, stdout, stderr io.Writer) error {
	fs := upFlags()
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	get := func(name string) flag.Getter { return fs.Lookup(name).Value.(flag.Getter) }
	nodes := get("nodes").Get().(int)
	containers := get("docker").Get().(bool)
	sidecar := get("sidecar").Get().(bool)
	group := get("group").Get().(bool)
	config := get("config").Get().(string)
	opts := testenv.Options{
		Nodes:        nodes,
		Management:   get("management").Get().(bool),
		KeepDirs:     get("keep").Get().(bool),
		StartTimeout: get("timeout").Get().(time.Duration),
		Backend:      map[bool]testenv.Backend{true: testenv.BackendDocker, false: ""}[containers],
		Logger:       func(f string, a ...any) { fmt.Fprintf(stderr, f+"\n", a...) },
	}
	if sidecar || group {
		opts.Sidecar = &testenv.SidecarOptions{}
	}
	if group {
		opts.Group = &testenv.GroupOptions{Policies: []testenv.Policy{
			{Name: "ha-all", Pattern: `^ha\.`, Definition: map[string]any{"ha-mode": "all"}},
		}}
	}
	if config != "" {
		b, err := os.ReadFile(config)
		if err != nil {
			return err
		}
		opts.Config = string(b)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	began := time.Now()
	g, err := testenv.StartGroup(ctx, opts)
	if err != nil {
		return err
	}
	defer g.Close()
	fmt.Fprintf(stderr, "%d broker(s) up in %.1fs; Ctrl-C stops them\n", len(g.Nodes), time.Since(began).Seconds())
	for _, n := range g.Nodes {
		fmt.Fprintf(stdout, "%s amqp=%s sidecar=%s mgmt=%s data=%s log=%s\n", n.Name, n.URL, n.SidecarURL, n.MgmtURL, n.DataDir, n.LogFile)
		if n.Member != "" {
			fmt.Fprintf(stdout, "  member=%s admin=%s config=%s\n", n.Member, n.AdminURL, n.SidecarConfig)
		}
	}
	fmt.Fprintf(stdout, "BROKERS=%s\n", strings.Join(g.URLs(), ","))
	if sidecar || group {
		var urls []string
		for _, n := range g.Nodes {
			urls = append(urls, n.SidecarURL)
		}
		fmt.Fprintf(stdout, "SIDECARS=%s\n", strings.Join(urls, ","))
	}
	<-ctx.Done()
	return g.Close()
}

// images builds (or finds) the docker backend's images and reports each
// with the time it took.
func images(args []string, stdout, stderr io.Writer) error {
	fs := imagesFlags()
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	binary := fs.Lookup("sidecar-binary").Value.String()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logf := func(f string, a ...any) { fmt.Fprintf(stderr, f+"\n", a...) }
	began := time.Now()
	report := func(kind string, b docker.ImageBuild) {
		what := "cached"
		if b.Built {
			what = "built"
		}
		fmt.Fprintf(stdout, "%s image %s: %s in %.1fs (inputs %s)\n", kind, b.Image, what, b.Took.Seconds(), b.Inputs[:12])
	}
	b, err := docker.EnsureBrokerImage(ctx, logf)
	if err != nil {
		return err
	}
	report("broker", b)
	s, err := docker.EnsureSidecarImage(ctx, binary, logf)
	if err != nil {
		return err
	}
	report("sidecar", s)
	fmt.Fprintf(stdout, "images ready in %.1fs\n", time.Since(began).Seconds())
	return nil
}
