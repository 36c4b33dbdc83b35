package amqp

import (
	"errors"
	"fmt"
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
