package main

import (
	"net"
	"time"

	"github.com/rs/zerolog"
)

// upstreamCheckTimeout bounds the start-up check of the broker.
const upstreamCheckTimeout = 2 * time.Second

// checkUpstream connects to the broker once at start-up and warns when it
// cannot: the sidecar runs anyway (the broker may come up later), and
// until it answers each client is refused with 320 CONNECTION_FORCED
// naming the broker and the cause. It reports whether the broker answered.
func checkUpstream(log zerolog.Logger, addr string) bool {
	c, err := net.DialTimeout("tcp", addr, upstreamCheckTimeout)
	if err != nil {
		log.Warn().Err(err).Str("upstream", addr).
			Msg("cannot reach the broker at start-up; serving anyway: clients are refused with 320 CONNECTION_FORCED until it answers")
		return false
	}
	c.Close()
	return true
}
