package main

import (
	"github.com/urfave/cli/v2"

	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/bench"
)

// benchCommand is `mirrorproxy bench`, which the bench package provides.
func benchCommand() *cli.Command { return bench.Command() }
