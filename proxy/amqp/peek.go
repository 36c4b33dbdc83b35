package amqp

import (
	"encoding/binary"
	"fmt"
)

// The Peek functions read the arguments the proxy needs per message straight
// from a method frame's payload (class and method ids included), without
// allocating: strings come back as sub-slices of p, valid as long as p is.
// They accept exactly what DecodeMethod accepts and fail with the same
// *FrameError codes; a payload of another method is a 503 COMMAND_INVALID
// naming both, as that is a caller's mistake more than the peer's.

// checkKey reports a payload that is not the method the caller expected.
func checkKey(p []byte, want uint32) error {
	key, ok := MethodKey(p)
	if !ok {
		return framef("method frame payload has %d octets, too few for class and method ids", len(p))
	}
	if key != want {
		return wrongMethod(key, MethodName(want))
	}
	return nil
}

func wrongMethod(key uint32, want string) error {
	got := MethodName(key)
	if got == "" {
		got = fmt.Sprintf("%d.%d", key>>16, key&0xffff)
	}
	return &FrameError{Code: CommandInvalid, Reason: fmt.Sprintf("expected %s, got %s", want, got)}
}

// peekShortstr returns the short string at p[i:] and the offset after it, or
// ok false when it does not fit.
func peekShortstr(p []byte, i int) (s []byte, next int, ok bool) {
	if i >= len(p) {
		return nil, i, false
	}
	n := int(p[i])
	if i+1+n > len(p) {
		return nil, i, false
	}
	return p[i+1 : i+1+n], i + 1 + n, true
}

// peekBits checks the octet of n bit fields at p[i] and that nothing follows
// it when last is set.
func peekBits(p []byte, i, n int, what string, last bool) (uint8, error) {
	if i >= len(p) {
		return 0, peekTruncated(what, p)
	}
	v := p[i]
	if v>>n != 0 {
		return 0, syntaxf("%s: octet of bit fields is 0x%02x: reserved bits above the %d defined are set", what, v, n)
	}
	if last && i+1 != len(p) {
		return 0, peekTrailing(what, len(p)-i-1)
	}
	return v, nil
}

func peekTruncated(what string, p []byte) error {
	return framef("%s: cannot decode: its %d octets of arguments end inside a field", what, len(p)-4)
}

func peekTrailing(what string, n int) error {
	return framef("%s: cannot decode: %d octets after the arguments", what, n)
}

// PeekBasicPublish reads basic.publish's exchange, routing key and mandatory
// flag.
func PeekBasicPublish(p []byte) (exchange, routingKey []byte, mandatory bool, err error) {
	if err = checkKey(p, BasicPublishID); err != nil {
		return
	}
	// reserved-1 short, exchange shortstr, routing-key shortstr, bits.
	i := 6
	var ok bool
	if exchange, i, ok = peekShortstr(p, i); !ok {
		return nil, nil, false, peekTruncated("basic.publish", p)
	}
	if routingKey, i, ok = peekShortstr(p, i); !ok {
		return nil, nil, false, peekTruncated("basic.publish", p)
	}
	bits, err := peekBits(p, i, 2, "basic.publish", true)
	if err != nil {
		return nil, nil, false, err
	}
	return exchange, routingKey, bits&1 != 0, nil
}

// PeekBasicDeliver reads all of basic.deliver's arguments.
func PeekBasicDeliver(p []byte) (consumerTag []byte, deliveryTag uint64, redelivered bool, exchange, routingKey []byte, err error) {
	if err = checkKey(p, BasicDeliverID); err != nil {
		return
	}
	i := 4
	var ok bool
	if consumerTag, i, ok = peekShortstr(p, i); !ok {
		return nil, 0, false, nil, nil, peekTruncated("basic.deliver", p)
	}
	if i+8 > len(p) {
		return nil, 0, false, nil, nil, peekTruncated("basic.deliver", p)
	}
	deliveryTag = binary.BigEndian.Uint64(p[i:])
	bits, err := peekBits(p, i+8, 1, "basic.deliver", false)
	if err != nil {
		return nil, 0, false, nil, nil, err
	}
	i += 9
	if exchange, i, ok = peekShortstr(p, i); !ok {
		return nil, 0, false, nil, nil, peekTruncated("basic.deliver", p)
	}
	if routingKey, i, ok = peekShortstr(p, i); !ok {
		return nil, 0, false, nil, nil, peekTruncated("basic.deliver", p)
	}
	if i != len(p) {
		return nil, 0, false, nil, nil, peekTrailing("basic.deliver", len(p)-i)
	}
	return consumerTag, deliveryTag, bits != 0, exchange, routingKey, nil
}

// PeekBasicGetOk reads all of basic.get-ok's arguments.
func PeekBasicGetOk(p []byte) (deliveryTag uint64, redelivered bool, exchange, routingKey []byte, messageCount uint32, err error) {
	if err = checkKey(p, BasicGetOkID); err != nil {
		return
	}
	if len(p) < 4+8 {
		return 0, false, nil, nil, 0, peekTruncated("basic.get-ok", p)
	}
	deliveryTag = binary.BigEndian.Uint64(p[4:])
	bits, err := peekBits(p, 12, 1, "basic.get-ok", false)
	if err != nil {
		return 0, false, nil, nil, 0, err
	}
	i := 13
	var ok bool
	if exchange, i, ok = peekShortstr(p, i); !ok {
		return 0, false, nil, nil, 0, peekTruncated("basic.get-ok", p)
	}
	if routingKey, i, ok = peekShortstr(p, i); !ok {
		return 0, false, nil, nil, 0, peekTruncated("basic.get-ok", p)
	}
	if i+4 > len(p) {
		return 0, false, nil, nil, 0, peekTruncated("basic.get-ok", p)
	}
	if i+4 != len(p) {
		return 0, false, nil, nil, 0, peekTrailing("basic.get-ok", len(p)-i-4)
	}
	return deliveryTag, bits != 0, exchange, routingKey, binary.BigEndian.Uint32(p[i:]), nil
}

// peekTagged reads the delivery tag and the octet of n bits that make up
// basic.ack, basic.nack and basic.reject.
func peekTagged(p []byte, want uint32, n int, what string) (uint64, uint8, error) {
	if err := checkKey(p, want); err != nil {
		return 0, 0, err
	}
	if len(p) < 4+8 {
		return 0, 0, peekTruncated(what, p)
	}
	bits, err := peekBits(p, 12, n, what, true)
	if err != nil {
		return 0, 0, err
	}
	return binary.BigEndian.Uint64(p[4:]), bits, nil
}

// PeekBasicAck reads basic.ack's delivery tag and multiple flag.
func PeekBasicAck(p []byte) (tag uint64, multiple bool, err error) {
	tag, bits, err := peekTagged(p, BasicAckID, 1, "basic.ack")
	return tag, bits&1 != 0, err
}

// PeekBasicNack reads basic.nack's delivery tag and its multiple and requeue
// flags.
func PeekBasicNack(p []byte) (tag uint64, multiple, requeue bool, err error) {
	tag, bits, err := peekTagged(p, BasicNackID, 2, "basic.nack")
	return tag, bits&1 != 0, bits&2 != 0, err
}

// PeekBasicReject reads basic.reject's delivery tag and requeue flag.
func PeekBasicReject(p []byte) (tag uint64, requeue bool, err error) {
	tag, bits, err := peekTagged(p, BasicRejectID, 1, "basic.reject")
	return tag, bits&1 != 0, err
}

// SetDeliveryTag overwrites, in place, the delivery tag of a basic.deliver or
// basic.get-ok payload (which must be well formed: it is checked first).
func SetDeliveryTag(p []byte, tag uint64) error {
	key, ok := MethodKey(p)
	if !ok {
		return checkKey(p, BasicDeliverID)
	}
	switch key {
	case BasicDeliverID:
		if _, _, _, _, _, err := PeekBasicDeliver(p); err != nil {
			return err
		}
		binary.BigEndian.PutUint64(p[4+1+int(p[4]):], tag)
		return nil
	case BasicGetOkID:
		if _, _, _, _, _, err := PeekBasicGetOk(p); err != nil {
			return err
		}
		binary.BigEndian.PutUint64(p[4:], tag)
		return nil
	}
	return wrongMethod(key, "basic.deliver or basic.get-ok")
}

// SetRedelivered sets, in place, the redelivered flag of a basic.deliver or
// basic.get-ok payload (checked first).
func SetRedelivered(p []byte) error {
	key, ok := MethodKey(p)
	if !ok {
		return checkKey(p, BasicDeliverID)
	}
	switch key {
	case BasicDeliverID:
		if _, _, _, _, _, err := PeekBasicDeliver(p); err != nil {
			return err
		}
		p[4+1+int(p[4])+8] |= 1
		return nil
	case BasicGetOkID:
		if _, _, _, _, _, err := PeekBasicGetOk(p); err != nil {
			return err
		}
		p[12] |= 1
		return nil
	}
	return wrongMethod(key, "basic.deliver or basic.get-ok")
}

// SetAckTag overwrites, in place, the delivery tag of a basic.ack,
// basic.nack or basic.reject payload (checked first).
func SetAckTag(p []byte, tag uint64) error {
	key, ok := MethodKey(p)
	if !ok {
		return checkKey(p, BasicAckID)
	}
	var err error
	switch key {
	case BasicAckID:
		_, _, err = PeekBasicAck(p)
	case BasicNackID:
		_, _, _, err = PeekBasicNack(p)
	case BasicRejectID:
		_, _, err = PeekBasicReject(p)
	default:
		return wrongMethod(key, "basic.ack, basic.nack or basic.reject")
	}
	if err != nil {
		return err
	}
	binary.BigEndian.PutUint64(p[4:], tag)
	return nil
}
