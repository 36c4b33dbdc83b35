package testenv

// Helpers shared by the backends.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"time"
)

const (
	// startAttempts bounds retries of a start whose ports or node name
	// were taken (another test picked the same free port at the same time).
	startAttempts = 5
	// pollInterval is how often readiness is probed.
	pollInterval = 100 * time.Millisecond
	// goneTimeout bounds waiting for killed processes to disappear.
	goneTimeout = 30 * time.Second
	// logTailLines is how much of each log a StartError carries.
	logTailLines = 40
)

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand documents it)
	return hex.EncodeToString(b)
}

// amqpAnswers reports whether addr answers prefix and an AMQP 0-9-1
// protocol header with a method frame on channel 0 (connection.start).
func amqpAnswers(ctx context.Context, addr, prefix string) bool {
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(prefix + "AMQP\x00\x00\x09\x01")); err != nil {
		return false
	}
	var hdr [7]byte
	if _, err := readFull(c, hdr[:]); err != nil {
		return false
	}
	return hdr[0] == 1 && hdr[1] == 0 && hdr[2] == 0
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
