package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/demo"
)

func main() {
	zerolog.TimeFieldFormat = time.RFC3339Nano
	os.Exit(runMain(os.Args, os.Stdout, os.Stderr))
}

// runMain runs the command line args and returns the process's exit code.
// Errors are printed on stderr, one line per problem.
func runMain(args []string, stdout, stderr io.Writer) int {
	err := newApp(stdout, stderr).Run(args)
	if err == nil {
		return 0
	}
	if msg := err.Error(); msg != "" {
		fmt.Fprintln(stderr, msg)
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) && ec.ExitCode() != 0 {
		return ec.ExitCode()
	}
	return 1
}

// newApp builds the command line. It writes only to stdout and stderr and
// never exits the process, so tests can run it.
func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:        "mirrorproxy",
		Usage:       "sidecar proxy giving single-node RabbitMQ brokers classic mirrored queues",
		HideVersion: true,
		Writer:      stdout,
		ErrWriter:   stderr,
		// Errors are returned to runMain, which prints them and picks the
		// exit code; the default handler would call os.Exit itself.
		ExitErrHandler: func(*cli.Context, error) {},
		Commands:       commands(),
		Action: unknownCommand(func(c *cli.Context) []*cli.Command { return c.App.VisibleCommands() },
			cli.ShowAppHelp),
	}
}

// commands lists the sub-commands. Packages that bring their own command
// are added through a hook (benchCommand) or their own Command.
func commands() []*cli.Command {
	return []*cli.Command{
		runCommand(),
		configCommand(),
		versionCommand(),
		ctlCommand(),
		benchCommand(),
		demo.Command(),
	}
}
