// Command testenv starts RabbitMQ brokers for demos and benchmarks, and
// removes what crashed test runs left behind.
//
//	go run ./testenv/cmd/testenv up -nodes 3 [-docker] [-sidecar] [-group] [-management] [-config extra.conf] [-keep]
//	go run ./testenv/cmd/testenv images [-sidecar-binary bin/mirrorproxy]
//	go run ./testenv/cmd/testenv cleanup
//
// `up` prints one line per broker and a line "BROKERS=url,url,..." (and
// "SIDECARS=..." with -sidecar; with -group also each node's member name,
// admin API URL and sidecar config file) and keeps them running until SIGINT or
// SIGTERM. `images` builds the docker backend's broker and sidecar images
// unless images of the same inputs exist, and prints what it did and how
// long it took (`make images`). `cleanup` kills brokers whose test process
// is gone and removes their directories (see testenv.Cleanup), and removes
// such groups' containers and networks when a Docker engine answers
// (testenv.CleanupDocker); it leaves groups of running processes alone.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/mirrorproxy/mirrorproxy/testenv"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		os.Exit(1)
	}
}

func usage() error {
	return errors.New("usage: testenv up [-nodes N] [-docker] [-sidecar] [-group] [-management] [-config FILE] [-keep] | testenv images [-sidecar-binary FILE] | testenv cleanup")
}

func run(args []string) error {
	if len(args) == 0 {
		return usage()
	}
	switch args[0] {
	case "up":
		return up(args[1:])
	case "images":
		return images(args[1:])
	case "cleanup":
		removed, err := testenv.Cleanup()
		if derr := testenv.DockerAvailable(context.Background()); derr == nil {
			more, cerr := testenv.CleanupDocker(context.Background())
			removed = append(removed, more...)
			err = errors.Join(err, cerr)
		}
		for _, d := range removed {
			fmt.Println("removed", d)
		}
		if err == nil && len(removed) == 0 {
			fmt.Println("nothing to clean up")
		}
		return err
	default:
		return usage()
	}
}

func up(args []string) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	nodes := fs.Int("nodes", 3, "number of brokers")
	docker := fs.Bool("docker", false, "run the nodes in containers (the docker backend)")
	sidecar := fs.Bool("sidecar", false, "start a mirrorproxy sidecar beside each broker")
	group := fs.Bool("group", false, "make the sidecars one mirrored group (implies -sidecar; local backend; policy ha-all mirrors ^ha\\. queues on every node)")
	mgmt := fs.Bool("management", false, "enable the management plugin")
	config := fs.String("config", "", "file with extra rabbitmq.conf lines")
	keep := fs.Bool("keep", false, "keep data and log directories on exit")
	timeout := fs.Duration("timeout", testenv.DefaultStartTimeout, "start timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	opts := testenv.Options{
		Nodes:        *nodes,
		Management:   *mgmt,
		KeepDirs:     *keep,
		StartTimeout: *timeout,
		Backend:      testenv.Backend(map[bool]string{true: "docker", false: ""}[*docker]),
		Logger:       func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) },
	}
	if *sidecar || *group {
		opts.Sidecar = &testenv.SidecarOptions{}
	}
	if *group {
		opts.Group = &testenv.GroupOptions{Policies: []testenv.Policy{
			{Name: "ha-all", Pattern: `^ha\.`, Definition: map[string]any{"ha-mode": "all"}},
		}}
	}
	if *config != "" {
		b, err := os.ReadFile(*config)
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
	fmt.Fprintf(os.Stderr, "%d broker(s) up in %.1fs; Ctrl-C stops them\n", len(g.Nodes), time.Since(began).Seconds())
	for _, n := range g.Nodes {
		fmt.Printf("%s amqp=%s sidecar=%s mgmt=%s data=%s log=%s\n", n.Name, n.URL, n.SidecarURL, n.MgmtURL, n.DataDir, n.LogFile)
		if n.Member != "" {
			fmt.Printf("  member=%s admin=%s config=%s\n", n.Member, n.AdminURL, n.SidecarConfig)
		}
	}
	fmt.Printf("BROKERS=%s\n", strings.Join(g.URLs(), ","))
	if *sidecar || *group {
		var urls []string
		for _, n := range g.Nodes {
			urls = append(urls, n.SidecarURL)
		}
		fmt.Printf("SIDECARS=%s\n", strings.Join(urls, ","))
	}
	<-ctx.Done()
	return g.Close()
}

// images builds (or finds) the docker backend's images and reports each
// with the time it took.
func images(args []string) error {
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	binary := fs.String("sidecar-binary", "", "static mirrorproxy binary for the sidecar image (default: go build ./cmd/mirrorproxy)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	began := time.Now()
	report := func(kind string, b testenv.ImageBuild) {
		what := "cached"
		if b.Built {
			what = "built"
		}
		fmt.Printf("%s image %s: %s in %.1fs (inputs %s)\n", kind, b.Image, what, b.Took.Seconds(), b.Inputs[:12])
	}
	b, err := testenv.EnsureBrokerImage(ctx, logf)
	if err != nil {
		return err
	}
	report("broker", b)
	s, err := testenv.EnsureSidecarImage(ctx, *binary, logf)
	if err != nil {
		return err
	}
	report("sidecar", s)
	fmt.Printf("images ready in %.1fs\n", time.Since(began).Seconds())
	return nil
}
