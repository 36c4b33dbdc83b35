package bench

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"
)

// Command returns the `bench` sub-command.
func Command() *cli.Command {
	d := DefaultConfig
	names := make([]string, len(d.Targets))
	for i, t := range d.Targets {
		names[i] = t.Name
	}
	return &cli.Command{
		Name:  "bench",
		Usage: "measure throughput and latency direct vs a bare TCP hop vs the proxy, in one interleaved run",
		Description: "Every round runs every target for every workload in a rotating order; the first --warmup\n" +
			"rounds are discarded; figures are medians over --runs rounds and ratios are medians of\n" +
			"per-round ratios. Without --broker a local broker is started for the run.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "broker", Usage: "broker AMQP URL, e.g. amqp://guest:guest@127.0.0.1:5672/ (default: start one)"},
			&cli.StringFlag{Name: "targets", Value: strings.Join(names, ","), Usage: "built-in targets to measure: " + strings.Join(builtinTargets, ", ") +
				" (mirrored, rmq-mirrored and rmq-quorum start 3 local brokers each; the rmq ones share one RabbitMQ cluster)"},
			&cli.StringSliceFlag{Name: "target", Usage: "an external target as NAME=HOST:PORT (repeatable), e.g. haproxy=127.0.0.1:5673"},
			&cli.StringFlag{Name: "workloads", Value: strings.Join(d.Workloads, ","), Usage: "workloads: publish, consume"},
			&cli.IntFlag{Name: "messages", Aliases: []string{"n"}, Value: d.Messages, Usage: "messages per run"},
			&cli.IntFlag{Name: "size", Value: d.MessageSize, Usage: "message body size in bytes (at least 8)"},
			&cli.BoolFlag{Name: "transient", Usage: "non-persistent messages: no broker fsync, so the targets' own cost stands out"},
			&cli.IntFlag{Name: "window", Value: d.Window, Usage: "most unconfirmed publishes in flight"},
			&cli.IntFlag{Name: "prefetch", Value: d.Prefetch, Usage: "consumer basic.qos prefetch count"},
			&cli.IntFlag{Name: "latency-samples", Value: d.LatencySamples, Usage: "ping-pong messages per consume run"},
			&cli.IntFlag{Name: "runs", Value: d.Runs, Usage: "measured rounds (medians are taken over them)"},
			&cli.IntFlag{Name: "warmup", Value: d.Warmup, Usage: "warm-up rounds, discarded"},
			&cli.DurationFlag{Name: "run-timeout", Value: d.RunTimeout, Usage: "bound on one workload run against one target"},
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress lines on stderr"},
		},
		Action: action,
	}
}

func action(c *cli.Context) error {
	targets, err := ParseTargets([]string{c.String("targets")}, c.StringSlice("target"))
	if err != nil {
		return err
	}
	var workloads []string
	for w := range strings.SplitSeq(c.String("workloads"), ",") {
		if w = strings.TrimSpace(w); w != "" {
			workloads = append(workloads, w)
		}
	}
	log := zerolog.New(zerolog.ConsoleWriter{Out: c.App.ErrWriter, NoColor: !isTerminal(c.App.ErrWriter)}).
		With().Timestamp().Logger()
	if c.Bool("quiet") {
		log = zerolog.Nop()
	}
	cfg := Config{
		BrokerURL:      c.String("broker"),
		Targets:        targets,
		Workloads:      workloads,
		Messages:       c.Int("messages"),
		MessageSize:    c.Int("size"),
		Transient:      c.Bool("transient"),
		Window:         c.Int("window"),
		Prefetch:       c.Int("prefetch"),
		LatencySamples: c.Int("latency-samples"),
		Runs:           c.Int("runs"),
		Warmup:         c.Int("warmup"),
		RunTimeout:     c.Duration("run-timeout"),
		Logger:         log,
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	// A Ctrl-C ends the run cleanly: targets stopped, queue deleted, a
	// broker started for the run stopped.
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := Run(ctx, cfg)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return rep.WriteJSON(c.App.Writer)
	}
	return rep.WriteText(c.App.Writer)
}

// Main runs `bench` with args (the flags after "bench"), printing to stdout
// and stderr. It is for running the tool without the mirrorproxy CLI.
func Main(args []string) error {
	app := &cli.App{
		Name:     "mirrorproxy",
		Usage:    "bench only",
		Commands: []*cli.Command{Command()},
	}
	if err := app.Run(append([]string{"mirrorproxy", "bench"}, args...)); err != nil {
		return fmt.Errorf("mirrorproxy bench: %w", err)
	}
	return nil
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
