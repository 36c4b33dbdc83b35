//go:build !linux

package testenv

import (
	"errors"
	"runtime"
)

var errNotLinux = errors.New("testenv: the local backend needs Linux (process groups, Pdeathsig, /proc); on " +
	runtime.GOOS + " use the docker backend (MIRRORPROXY_TESTENV=docker)")

func newLocalBackend(Options) (Driver, error) { return nil, errNotLinux }

// Cleanup removes stale group directories; see the Linux version.
func Cleanup() ([]string, error) { return nil, errNotLinux }
