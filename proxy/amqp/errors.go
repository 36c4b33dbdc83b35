package amqp

import (
	"errors"
	"fmt"
	"strconv"
)

// Reply codes (AMQP 0-9-1 §1.9 constants) the proxy sends or reads.
const (
	ReplySuccess       = 200
	ContentTooLarge    = 311
	NoRoute            = 312
	NoConsumers        = 313
	ConnectionForced   = 320
	InvalidPath        = 402
	AccessRefused      = 403
	NotFound           = 404
	ResourceLocked     = 405
	PreconditionFailed = 406
	FrameErrorCode     = 501
	SyntaxError        = 502
	CommandInvalid     = 503
	ChannelError       = 504
	UnexpectedFrame    = 505
	ResourceError      = 506
	NotAllowed         = 530
	NotImplemented     = 540
	InternalError      = 541
)

// ErrBadProtocolHeader is returned when a peer does not open with AMQP 0-9-1's
// protocol header. A broker answers it by writing its own header and closing.
var ErrBadProtocolHeader = errors.New("amqp: bad protocol header")

// FrameError is malformed input: a bad frame, an undecodable method or
// content header. Code is the reply code a broker would close the connection
// (or, for a channel-level fault, the channel) with.
type FrameError struct {
	Code   uint16
	Reason string
}

func (e *FrameError) Error() string { return fmt.Sprintf("amqp: %d %s", e.Code, e.Reason) }

// syntaxf makes a 502 SYNTAX_ERROR.
func syntaxf(format string, args ...any) error {
	return &FrameError{Code: SyntaxError, Reason: fmt.Sprintf(format, args...)}
}

// Octets shows a payload as RabbitMQ's rabbit_reader does in its errors:
// "all octets = <<…>>", or "first 16 octets = <<…>>", the binary printed as
// Erlang's ~p prints it (a string when every octet is printable). Octets
// above 127, which Erlang may print as Latin-1 text, are shown as numbers.
func Octets(p []byte) string {
	which := "all"
	if len(p) > 16 {
		which, p = "first 16", p[:16]
	}
	b := make([]byte, 0, len(which)+12+4*len(p))
	b = append(b, which...)
	b = append(b, " octets = <<"...)
	if printable(p) {
		b = append(b, '"')
		for _, o := range p {
			if e := erlEscapes[o]; e != 0 {
				b = append(b, '\\', e)
			} else {
				b = append(b, o)
			}
		}
		b = append(b, '"')
	} else {
		for i, o := range p {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendUint(b, uint64(o), 10)
		}
	}
	return string(append(b, ">>"...))
}

// erlEscapes are the octets Erlang's ~p writes escaped in a string.
var erlEscapes = [256]byte{'\n': 'n', '\r': 'r', '\t': 't', '\v': 'v', '\b': 'b', '\f': 'f', 27: 'e', '"': '"', '\\': '\\'}

// printable: a non-empty binary that Erlang's ~p prints as a string.
func printable(p []byte) bool {
	if len(p) == 0 {
		return false
	}
	for _, o := range p {
		if (o < ' ' || o > '~') && erlEscapes[o] == 0 {
			return false
		}
	}
	return true
}
