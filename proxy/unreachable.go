package proxy

import (
	"fmt"
	"time"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// refuseTimeout bounds the exchange that tells a client the broker cannot
// be reached: the dial may have used up the handshake deadline already.
const refuseTimeout = 5 * time.Second

// unreachableStart is the connection.start the proxy sends when it has no
// broker to take the broker's own: just enough for a client to answer
// start-ok, after which the connection.close it reads carries the reason.
// Its product "mirrorproxy" tells it from a broker's start, which passes
// through unchanged: testenv's readiness probe relies on that.
func unreachableStart() *amqp.ConnectionStart {
	return &amqp.ConnectionStart{
		VersionMajor: 0, VersionMinor: 9,
		ServerProperties: amqp.Table{
			{Key: "product", Value: "mirrorproxy"},
			{Key: "information", Value: "the broker behind this sidecar cannot be reached"},
		},
		Mechanisms: "PLAIN AMQPLAIN",
		Locales:    "en_US",
	}
}

// unreachableReason is the reply text of the 320 a client gets when the
// session's core (its broker, or the master's sidecar) cannot be reached:
// it names where the proxy tried to go and why it failed.
func unreachableReason(core Core, cause error) string {
	return amqp.TruncateShortstr(fmt.Sprintf("CONNECTION_FORCED - mirrorproxy cannot reach %s: %v", core, cause))
}

// refuseUnreachable ends a session whose leg could not be opened. The
// client sent its protocol header already; rather than a bare EOF, which
// clients report as a protocol or authentication problem, it gets what a
// broker that refuses a connection sends: connection.start, and after its
// start-ok, connection.close 320 CONNECTION_FORCED naming the broker and
// the cause. It waits (bounded) for the close-ok and closes the client.
func (s *session) refuseUnreachable(cause error) {
	reason := unreachableReason(s.route.Core, cause)
	s.log.Error().Err(cause).Stringer("core", s.route.Core).
		Msg("cannot reach the broker; closing the client with 320 CONNECTION_FORCED")
	s.client.SetDeadline(time.Now().Add(refuseTimeout))
	if err := s.cout.write(amqp.AppendMethodFrame(nil, 0, unreachableStart())); err != nil {
		return
	}
	s.cr.SetMaxFrameSize(handshakeFrameMax)
	f, err := s.readClient()
	if err != nil {
		// A client that broke the protocol or stalled: nobody left to tell.
		s.log.Debug().Err(err).Msg("no start-ok from the client before the 320")
		return
	}
	if key, _ := amqp.MethodKey(f.Payload); key != amqp.ConnectionStartOkID {
		s.log.Debug().Str("method", amqp.MethodName(key)).Msg("the client did not answer connection.start with start-ok")
		lingerClose(s.client)
		return
	}
	cl := amqp.ConnectionClose{ReplyCode: amqp.ConnectionForced, ReplyText: reason}
	if err := s.cout.write(amqp.AppendMethodFrame(nil, 0, &cl)); err != nil {
		return
	}
	// Wait for the close-ok (or the client's end), so the close frame is
	// not lost to a reset.
	for {
		f, err := s.cr.ReadFrame()
		if err != nil || isCloseOk(f) {
			break
		}
	}
	lingerClose(s.client)
}
