package main

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// containerPackages are the module path prefixes of the container
// machinery that only testenv/docker may bring in: testcontainers-go, the
// Docker engine client (moby, docker) and containerd's helpers.
var containerPackages = []string{
	"github.com/testcontainers/",
	"github.com/moby/",
	"github.com/docker/",
	"github.com/containerd/",
}

// TestProductionBinaryLinksNoContainerClient lists the packages the
// mirrorproxy binary links (`go list -deps`, as `go build` and `make
// build` see them) and fails when one of them is container machinery: the
// demo and bench commands use testenv's local backend only, and the docker
// backend lives in testenv/docker, which nothing in the binary imports
// (docs/DEPENDENCIES.md, "The production binary").
func TestProductionBinaryLinksNoContainerClient(t *testing.T) {
	const self = "github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy"
	for _, env := range [][]string{nil, {"CGO_ENABLED=0"}} {
		cmd := exec.Command("go", "list", "-deps", self)
		cmd.Env = append(os.Environ(), env...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list -deps %s (%v): %v\n%s", self, env, err, stderr.String())
		}
		deps := strings.Fields(string(out))
		// The list must be the binary's: itself and what it is made of.
		for _, want := range []string{self, "github.com/mirrorproxy/mirrorproxy/proxy", "github.com/hashicorp/raft"} {
			if !slices.Contains(deps, want) {
				t.Fatalf("go list -deps %s (%v) does not list %s; the check would prove nothing:\n%s", self, env, want, out)
			}
		}
		var bad []string
		for _, d := range deps {
			for _, p := range containerPackages {
				if strings.HasPrefix(d, p) {
					bad = append(bad, d)
				}
			}
		}
		if len(bad) > 0 {
			t.Errorf("the production binary (%v) links %d container packages, e.g. %s; keep them in testenv/docker (imported by tests and testenv/cmd/testenv only)",
				env, len(bad), strings.Join(bad[:min(len(bad), 5)], ", "))
			continue
		}
		t.Logf("go list -deps (%v): %d packages, none of %v", env, len(deps), containerPackages)
	}
}
