package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/urfave/cli/v2"
)

// version is the release, set at build time with
// -ldflags "-X main.version=v1.2.3" (the Makefile does). "dev" otherwise.
var version = "dev"

// buildInfo is what `mirrorproxy version` prints.
type buildInfo struct {
	Version  string // release, or the module version of a `go install`, or "dev"
	Commit   string // VCS revision, "" when the build did not record one
	Modified bool   // the work tree had uncommitted changes
	Go       string // Go version, OS/arch
}

// readBuildInfo combines the -X version with the build's recorded settings.
func readBuildInfo() buildInfo {
	bi := buildInfo{Version: version, Go: runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return bi
	}
	if bi.Version == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		bi.Version = info.Main.Version
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			bi.Commit = s.Value
		case "vcs.modified":
			bi.Modified = s.Value == "true"
		}
	}
	return bi
}

func (b buildInfo) write(w io.Writer) error {
	commit := b.Commit
	switch {
	case commit == "":
		commit = "unknown (built without VCS information)"
	case b.Modified:
		commit += " (modified)"
	}
	_, err := fmt.Fprintf(w, "mirrorproxy %s\ncommit: %s\ngo: %s\n", b.Version, commit, b.Go)
	return err
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version, commit and Go version",
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return cli.Exit(fmt.Sprintf("version takes no arguments, got %q", c.Args().First()), 1)
			}
			return readBuildInfo().write(c.App.Writer)
		},
	}
}
