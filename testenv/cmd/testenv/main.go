// Command testenv starts RabbitMQ brokers for demos and benchmarks, and
// removes what crashed test runs left behind.
//
//	go run ./testenv/cmd/testenv up -nodes 3 [-management] [-config extra.conf] [-keep]
//	go run ./testenv/cmd/testenv cleanup
//
// `up` prints one line per broker and a line "BROKERS=url,url,..." and
// keeps them running until SIGINT or SIGTERM. `cleanup` kills brokers
// whose test process is gone and removes their directories (see
// testenv.Cleanup); it leaves groups of running processes alone.
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
	return errors.New("usage: testenv up [-nodes N] [-management] [-config FILE] [-keep] | testenv cleanup")
}

func run(args []string) error {
	if len(args) == 0 {
		return usage()
	}
	switch args[0] {
	case "up":
		return up(args[1:])
	case "cleanup":
		removed, err := testenv.Cleanup()
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
		Logger:       func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) },
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
		fmt.Printf("%s amqp=%s mgmt=%s data=%s log=%s\n", n.Name, n.URL, n.MgmtURL, n.DataDir, n.LogFile)
	}
	fmt.Printf("BROKERS=%s\n", strings.Join(g.URLs(), ","))
	<-ctx.Done()
	return g.Close()
}
