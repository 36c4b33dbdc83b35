package backend

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"time"
)

// AMQPAnswers reports whether addr answers prefix and an AMQP 0-9-1
// protocol header with a method frame on channel 0 (connection.start)
// from a broker. A mirrorproxy sidecar whose broker cannot be reached
// answers with a connection.start of its own, product "mirrorproxy" (a
// broker's passes through unchanged), before it closes with 320: that is
// no broker answering.
func AMQPAnswers(ctx context.Context, addr, prefix string) bool {
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
	if hdr[0] != 1 || hdr[1] != 0 || hdr[2] != 0 {
		return false
	}
	size := binary.BigEndian.Uint32(hdr[3:])
	if size > maxStartFrame {
		return true // larger than any refusal: a broker's
	}
	payload := make([]byte, size)
	if _, err := readFull(c, payload); err != nil {
		return false
	}
	return !bytes.Contains(payload, sidecarRefusal)
}

// sidecarRefusal is the server-properties field product = "mirrorproxy"
// as a field table encodes it: the connection.start a sidecar sends when
// its broker cannot be reached (proxy/unreachable.go).
var sidecarRefusal = []byte("\x07productS\x00\x00\x00\x0bmirrorproxy")

// maxStartFrame bounds the connection.start payload AMQPAnswers reads.
const maxStartFrame = 64 << 10

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
