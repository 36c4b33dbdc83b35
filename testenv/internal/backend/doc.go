// Package backend holds what testenv's two backends share: the local one
// (rabbitmq-server processes, in package testenv) and the docker one
// (containers, package testenv/docker). It knows neither Group nor Node:
// owner marks of the process that made a group, the AMQP readiness probe,
// log excerpts, random names and the polling constants.
package backend

import (
	"crypto/rand"
	"encoding/hex"
	"time"
)

const (
	// PollInterval is how often readiness is probed.
	PollInterval = 100 * time.Millisecond
	// GoneTimeout bounds waiting for killed processes to disappear.
	GoneTimeout = 30 * time.Second
	// LogTailLines is how much of each log a StartError carries.
	LogTailLines = 40
)

// RandomHex returns n random bytes as hex (2n characters).
func RandomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand documents it)
	return hex.EncodeToString(b)
}
