package amqp

import (
	"encoding/binary"
	"fmt"
)

//go:generate go run ./internal/gen/amqpgen -dir .

// Method is one AMQP method with its arguments: a pointer to one of the
// generated structs (*BasicPublish, *QueueDeclare, ...).
type Method interface {
	// ClassID and MethodID are the method's ids on the wire.
	ClassID() uint16
	MethodID() uint16
	// Name is the method's name as RabbitMQ logs it: "basic.publish".
	Name() string
	// HasContent reports whether a content header and body frames follow
	// the method (basic.publish, basic.return, basic.deliver, basic.get-ok).
	HasContent() bool
	// Synchronous is the spec's synchronous attribute: the method is a
	// request its sender waits on (unless it sets no-wait) or the reply to
	// one. channel.flow-ok, basic.publish and the acknowledgements are not.
	Synchronous() bool
	// AppendArgs appends the encoded arguments to dst. It panics with an
	// *EncodeError when a field cannot be encoded (a short string longer
	// than 255 octets, a table value of an unsupported Go type);
	// ValidateMethod reports that without panicking.
	AppendArgs(dst []byte) []byte
}

// Key returns m's class id<<16 | method id, the form of the *ID constants.
func Key(m Method) uint32 { return uint32(m.ClassID())<<16 | uint32(m.MethodID()) }

// MethodKey reads the class and method ids at the start of a method frame's
// payload, without decoding anything else. ok is false when the payload is
// shorter than the 4 octets they take.
func MethodKey(payload []byte) (key uint32, ok bool) {
	if len(payload) < 4 {
		return 0, false
	}
	return binary.BigEndian.Uint32(payload), true
}

// DecodeMethod decodes the payload of a method frame. The strings of the
// result share one copy of the payload, so p may be reused afterwards.
//
// Errors are *FrameError (the package comment compares them with what
// RabbitMQ 3.10 answers):
//   - 501 FRAME_ERROR for arguments that end early or are followed by more
//     octets (RabbitMQ: 501 "cannot decode");
//   - 503 COMMAND_INVALID for a class or method id that does not exist
//     (RabbitMQ mostly drops the connection without a close);
//   - 502 SYNTAX_ERROR for values that decode but are not the canonical
//     encoding: reserved bits set in an octet of bit fields, a boolean table
//     value other than 0 or 1, an unknown field table type, tables nested
//     deeper than 64. Refusing those keeps decoding and AppendArgs exact
//     inverses.
func DecodeMethod(payload []byte) (Method, error) {
	key, ok := MethodKey(payload)
	if !ok {
		return nil, framef("method frame payload has %d octets, too few for class and method ids", len(payload))
	}
	name := MethodName(key)
	if name == "" {
		class, method := uint16(key>>16), uint16(key)
		if cname := ClassName(class); cname != "" {
			return nil, &FrameError{Code: CommandInvalid, Reason: fmt.Sprintf("unknown method %d.%d: class %s has no method %d", class, method, cname, method)}
		}
		return nil, &FrameError{Code: CommandInvalid, Reason: fmt.Sprintf("unknown class %d (method %d)", class, method)}
	}
	r := wireReader{s: string(payload[4:]), what: name}
	m := decodeArgs(key, &r)
	if r.err != nil {
		return nil, r.err
	}
	if len(r.s) != 0 {
		return nil, framef("%s: cannot decode: %d octets after the arguments", name, len(r.s))
	}
	return m, nil
}

// AppendMethod appends a method frame's payload for m (class id, method id,
// arguments) to dst.
func AppendMethod(dst []byte, m Method) []byte {
	dst = binary.BigEndian.AppendUint16(dst, m.ClassID())
	dst = binary.BigEndian.AppendUint16(dst, m.MethodID())
	return m.AppendArgs(dst)
}

// AppendMethodFrame appends a whole method frame carrying m on channel to dst.
func AppendMethodFrame(dst []byte, channel uint16, m Method) []byte {
	dst, off := BeginFrame(dst, FrameMethod, channel)
	dst = AppendMethod(dst, m)
	return EndFrame(dst, off)
}

// ValidateMethod reports what AppendArgs would panic on: short strings
// longer than 255 octets and table values AMQP cannot carry.
func ValidateMethod(m Method) (err error) {
	defer func() {
		if p := recover(); p != nil {
			ee, ok := p.(*EncodeError)
			if !ok {
				panic(p)
			}
			err = ee
		}
	}()
	m.AppendArgs(nil)
	return nil
}
