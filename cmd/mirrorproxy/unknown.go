package main

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"
)

// exitUsage is the exit status of a command line that names no command
// (as flag parsing errors and rabbitmqctl's usage errors use 64, the shells'
// and Go's flag package use 2 for usage).
const exitUsage = 2

// unknownCommand is the Action of the app and of commands with
// sub-commands (ctl): without an argument it shows the help; with one
// that names no command it says so, lists the commands and exits 2.
// urfave/cli's own answer was "No help topic for 'bogus'", exit 3.
func unknownCommand(list func(*cli.Context) []*cli.Command, help func(*cli.Context) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		if c.NArg() == 0 {
			return help(c)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "unknown command '%s'; the commands are:\n", c.Args().First())
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		for _, cmd := range list(c) {
			fmt.Fprintf(tw, "  %s\t%s\n", cmd.Name, cmd.Usage)
		}
		tw.Flush()
		fmt.Fprintf(&b, "'%s --help' says more", c.Command.HelpName)
		return cli.Exit(b.String(), exitUsage)
	}
}
