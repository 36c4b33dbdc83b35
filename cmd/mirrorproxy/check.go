package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/config"
)

func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "work with configuration files",
		Subcommands: []*cli.Command{{
			Name:      "check",
			Usage:     `check config files: prints "FILE: ok", or each problem as FILE:LINE: key: what is wrong`,
			ArgsUsage: "FILE...",
			Action: func(c *cli.Context) error {
				if c.NArg() == 0 {
					return cli.Exit("config check: give the config file to check, e.g. mirrorproxy config check config.yaml", 1)
				}
				bad := 0
				for _, file := range c.Args().Slice() {
					if err := checkFile(file); err != nil {
						fmt.Fprintln(c.App.ErrWriter, err)
						bad++
						continue
					}
					fmt.Fprintf(c.App.Writer, "%s: ok\n", file)
				}
				if bad > 0 {
					return cli.Exit("", 1)
				}
				return nil
			},
		}},
	}
}

// checkFile loads and validates one file, returning every problem as one
// error (one line per problem) or nil.
func checkFile(file string) error {
	c, err := config.Load(file)
	if c == nil {
		return err // unreadable
	}
	return c.Validate() // includes Load's decoding problems
}
