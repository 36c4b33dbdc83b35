package testenv

// Helpers shared by the backends live in internal/backend; these are the
// local names the package uses.

import "github.com/mirrorproxy/mirrorproxy/testenv/internal/backend"

const (
	// startAttempts bounds retries of a start whose ports or node name
	// were taken (another test picked the same free port at the same time).
	startAttempts = 5
	pollInterval  = backend.PollInterval
	goneTimeout   = backend.GoneTimeout
	logTailLines  = backend.LogTailLines
)

var (
	randomHex          = backend.RandomHex
	amqpAnswers        = backend.AMQPAnswers
	headTail           = backend.HeadTail
	lastLines          = backend.LastLines
	buildSidecarBinary = backend.BuildSidecar
	selfOwner          = backend.SelfOwner
	ownerAlive         = backend.OwnerAlive
)
