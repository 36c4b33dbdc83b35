package amqp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
)

// wireReader decodes AMQP's primitive types from a string holding a copy of
// the input: a whole method's arguments or a content header converted once,
// so that every short and long string decoded from it is a substring and
// costs no allocation of its own. The first failure sticks; later reads
// return zero values.
type wireReader struct {
	s    string // unread input
	what string // what is being decoded, for errors: "basic.publish"
	err  error
}

// need reports whether n more octets are there, and records a 501 naming
// field when they are not.
func (r *wireReader) need(field string, n uint64) bool {
	if r.err != nil {
		return false
	}
	if uint64(len(r.s)) < n {
		r.err = truncated(r.what, field, n, len(r.s))
		r.s = ""
		return false
	}
	return true
}

func (r *wireReader) octet(field string) uint8 {
	if !r.need(field, 1) {
		return 0
	}
	v := r.s[0]
	r.s = r.s[1:]
	return v
}

func (r *wireReader) short(field string) uint16 {
	if !r.need(field, 2) {
		return 0
	}
	v := be16(r.s)
	r.s = r.s[2:]
	return v
}

func (r *wireReader) long(field string) uint32 {
	if !r.need(field, 4) {
		return 0
	}
	v := be32(r.s)
	r.s = r.s[4:]
	return v
}

func (r *wireReader) longlong(field string) uint64 {
	if !r.need(field, 8) {
		return 0
	}
	v := be64(r.s)
	r.s = r.s[8:]
	return v
}

func (r *wireReader) shortstr(field string) string {
	n := r.octet(field)
	if !r.need(field, uint64(n)) {
		return ""
	}
	v := r.s[:n]
	r.s = r.s[n:]
	return v
}

func (r *wireReader) longstr(field string) string {
	n := r.long(field)
	if !r.need(field, uint64(n)) {
		return ""
	}
	v := r.s[:n]
	r.s = r.s[n:]
	return v
}

// bits reads an octet holding n packed bit fields (first is the lowest bit).
// The spec reserves the other bits; RabbitMQ ignores them, we refuse them
// (502) so that decoding and re-encoding gives back the same octets.
func (r *wireReader) bits(field string, n int) uint8 {
	v := r.octet(field)
	if r.err == nil && v>>n != 0 {
		r.err = syntaxf("%s: octet of bit fields from %s is 0x%02x: reserved bits above the %d defined are set", r.what, field, v, n)
	}
	return v
}

// table reads a field table: a long size and that many octets of fields.
func (r *wireReader) table(field string) Table {
	n := r.long(field)
	if !r.need(field, uint64(n)) {
		return nil
	}
	body := r.s[:n]
	r.s = r.s[n:]
	t, err := decodeTableBody(body, 0)
	if err != nil {
		r.err = prefixError(err, r.what+": "+field)
		return nil
	}
	return t
}

func be16(s string) uint16 { return uint16(s[0])<<8 | uint16(s[1]) }

func be32(s string) uint32 {
	return uint32(s[0])<<24 | uint32(s[1])<<16 | uint32(s[2])<<8 | uint32(s[3])
}

func be64(s string) uint64 { return uint64(be32(s))<<32 | uint64(be32(s[4:])) }

// truncated is the 501 FRAME_ERROR for input that ends inside a field, the
// answer RabbitMQ gives ("cannot decode") for arguments it cannot parse.
func truncated(what, field string, need uint64, have int) error {
	return &FrameError{Code: FrameErrorCode, Reason: fmt.Sprintf("%s: cannot decode %s: needs %d octets, %d left", what, field, need, have)}
}

// framef makes a 501 FRAME_ERROR.
func framef(format string, args ...any) error {
	return &FrameError{Code: FrameErrorCode, Reason: fmt.Sprintf(format, args...)}
}

// prefixError puts context in front of a *FrameError's reason, keeping its code.
func prefixError(err error, context string) error {
	var fe *FrameError
	if errors.As(err, &fe) {
		return &FrameError{Code: fe.Code, Reason: context + ": " + fe.Reason}
	}
	return fmt.Errorf("%s: %w", context, err)
}

// EncodeError is the value AppendArgs, AppendTable and the other Append
// functions panic with when asked to encode what AMQP cannot carry: a short
// string longer than 255 octets or a table value of a Go type that has no
// field type. Those are programming errors; ValidateMethod, ValidateTable and
// ValidateProperties find them without panicking.
type EncodeError struct {
	Reason string
}

func (e *EncodeError) Error() string { return "amqp: cannot encode " + e.Reason }

// MaxShortstr is the longest short string: its length is one octet.
const MaxShortstr = 255

func appendShortstr(dst []byte, s, what string) []byte {
	if len(s) > MaxShortstr {
		panic(&EncodeError{Reason: fmt.Sprintf("%s: short string of %d octets exceeds %d", what, len(s), MaxShortstr)})
	}
	dst = append(dst, byte(len(s)))
	return append(dst, s...)
}

func appendLongstr(dst []byte, s string) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(s)))
	return append(dst, s...)
}

// TruncateShortstr returns s cut to at most 255 octets without splitting a
// UTF-8 sequence, for short strings built from unbounded text such as a
// reply-text that quotes a name.
func TruncateShortstr(s string) string {
	if len(s) <= MaxShortstr {
		return s
	}
	n := MaxShortstr
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
