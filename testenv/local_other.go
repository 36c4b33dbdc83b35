//go:build !linux

package testenv

import (
	"errors"
	"os"
	"runtime"
	"strconv"
)

var errNotLinux = errors.New("testenv: the local backend needs Linux (process groups, Pdeathsig, /proc); on " +
	runtime.GOOS + " use the docker backend (MIRRORPROXY_TESTENV=docker)")

func newLocalBackend(Options) (backend, error) { return nil, errNotLinux }

// Cleanup removes stale group directories; see the Linux version.
func Cleanup() ([]string, error) { return nil, errNotLinux }

// selfOwner marks what this process makes with its pid; without /proc a
// reused pid cannot be told apart.
func selfOwner() (string, error) { return strconv.Itoa(os.Getpid()) + ":0", nil }

// ownerAlive cannot tell here: everything counts as alive, so
// CleanupDocker removes nothing on this system.
func ownerAlive(string) bool { return true }
