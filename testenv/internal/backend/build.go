package backend

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// BuildSidecar runs `go build` of cmd/mirrorproxy into out, from the
// current directory (inside this module, or a module that requires it).
func BuildSidecar(ctx context.Context, out string) error {
	goCmd := "go"
	if root := os.Getenv("GOROOT"); root != "" {
		if p := filepath.Join(root, "bin", "go"); fileExists(p) {
			goCmd = p
		}
	}
	cmd := exec.CommandContext(ctx, goCmd, "build", "-trimpath", "-buildvcs=false", "-o", out,
		"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("testenv: build the sidecar binary (go build github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy): %w\n%s\n(or set SidecarOptions.Binary or .Image)", err, o)
	}
	return nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
