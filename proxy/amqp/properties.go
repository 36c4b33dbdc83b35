package amqp

import (
	"encoding/binary"
	"fmt"
)

// Property flags: the bit of each basic property in the property-flags word.
// Bit 0 is the continuation bit (another flags word follows); bit 1 would be
// a 15th property, which basic does not have.
const (
	FlagContentType     uint16 = 1 << 15
	FlagContentEncoding uint16 = 1 << 14
	FlagHeaders         uint16 = 1 << 13
	FlagDeliveryMode    uint16 = 1 << 12
	FlagPriority        uint16 = 1 << 11
	FlagCorrelationID   uint16 = 1 << 10
	FlagReplyTo         uint16 = 1 << 9
	FlagExpiration      uint16 = 1 << 8
	FlagMessageID       uint16 = 1 << 7
	FlagTimestamp       uint16 = 1 << 6
	FlagType            uint16 = 1 << 5
	FlagUserID          uint16 = 1 << 4
	FlagAppID           uint16 = 1 << 3
	FlagClusterID       uint16 = 1 << 2
	flagContinuation    uint16 = 1 << 0
	flagsDefined               = 0xfffc
)

// Delivery modes.
const (
	Transient  uint8 = 1
	Persistent uint8 = 2
)

// Properties are the 14 properties of the basic class, carried by a content
// header frame.
//
// Flags records which properties are present. Encoding sends a property when
// its bit is set in Flags or its value is not the zero value, so Properties
// built in code need no Flags; decoding sets Flags as read, so a property
// sent with an empty value (present, but "" or 0) encodes again as it came.
type Properties struct {
	ContentType     string    // MIME type
	ContentEncoding string    // MIME encoding
	Headers         Table     // application headers
	DeliveryMode    uint8     // 1 transient, 2 persistent
	Priority        uint8     // 0..9
	CorrelationID   string    // application correlation id
	ReplyTo         string    // address to reply to
	Expiration      string    // per-message TTL in milliseconds, as text
	MessageID       string    // application message id
	Timestamp       Timestamp // message timestamp
	Type            string    // message type name
	UserID          string    // creating user id, checked by RabbitMQ
	AppID           string    // creating application id
	ClusterID       string    // deprecated cluster-id (reserved)
	Flags           uint16    // presence flags as read; see the type's comment

	// moreFlags counts the property-flags words after the first, as read:
	// a peer may set the continuation bit and send words that name no
	// properties (basic has only 14). Kept so the header re-encodes exactly.
	moreFlags uint8
}

// presentFlags is Flags plus the bit of every property with a non-zero value.
func (p *Properties) presentFlags() uint16 {
	f := p.Flags & flagsDefined
	set := func(bit uint16, on bool) {
		if on {
			f |= bit
		}
	}
	set(FlagContentType, p.ContentType != "")
	set(FlagContentEncoding, p.ContentEncoding != "")
	set(FlagHeaders, p.Headers != nil)
	set(FlagDeliveryMode, p.DeliveryMode != 0)
	set(FlagPriority, p.Priority != 0)
	set(FlagCorrelationID, p.CorrelationID != "")
	set(FlagReplyTo, p.ReplyTo != "")
	set(FlagExpiration, p.Expiration != "")
	set(FlagMessageID, p.MessageID != "")
	set(FlagTimestamp, p.Timestamp != 0)
	set(FlagType, p.Type != "")
	set(FlagUserID, p.UserID != "")
	set(FlagAppID, p.AppID != "")
	set(FlagClusterID, p.ClusterID != "")
	return f
}

// contentHeaderFixed is class-id(2) weight(2) body-size(8) property-flags(2).
const contentHeaderFixed = 14

// DecodeContentHeader decodes the payload of a content header frame. Like
// DecodeMethod it copies the payload once, so p may be reused afterwards.
//
// Errors are *FrameError: 505 UNEXPECTED_FRAME for a class other than basic
// or a non-zero weight (RabbitMQ's answer to both); 501 FRAME_ERROR for a
// property list that ends early or is followed by more octets; 502
// SYNTAX_ERROR for flags naming a property basic does not have or a headers
// table that is not canonical (see DecodeMethod). RabbitMQ 3.10 closes with
// 541 INTERNAL_ERROR on property lists it cannot parse.
func DecodeContentHeader(payload []byte) (classID uint16, bodySize uint64, props Properties, err error) {
	classID, bodySize, err = PeekContentHeader(payload)
	if err != nil {
		return classID, bodySize, props, err
	}
	r := wireReader{s: string(payload[12:]), what: "content header"}
	props.Flags = r.short("property flags")
	for f := props.Flags; f&flagContinuation != 0; {
		if props.moreFlags == 255 {
			return classID, bodySize, Properties{}, syntaxf("content header: more than 255 continued property-flags words")
		}
		props.moreFlags++
		f = r.short("property flags")
		if r.err != nil {
			return classID, bodySize, Properties{}, r.err
		}
		if f&^flagContinuation != 0 {
			return classID, bodySize, Properties{}, syntaxf("content header: property-flags word %d is 0x%04x: it names properties basic does not have", props.moreFlags+1, f)
		}
	}
	if props.Flags&^(flagsDefined|flagContinuation) != 0 {
		return classID, bodySize, Properties{}, syntaxf("content header: property flags 0x%04x set bit 1, a 15th property basic does not have", props.Flags)
	}
	f := props.Flags
	if f&FlagContentType != 0 {
		props.ContentType = r.shortstr("content-type")
	}
	if f&FlagContentEncoding != 0 {
		props.ContentEncoding = r.shortstr("content-encoding")
	}
	if f&FlagHeaders != 0 {
		props.Headers = r.table("headers")
		if props.Headers == nil && r.err == nil {
			props.Headers = Table{}
		}
	}
	if f&FlagDeliveryMode != 0 {
		props.DeliveryMode = r.octet("delivery-mode")
	}
	if f&FlagPriority != 0 {
		props.Priority = r.octet("priority")
	}
	if f&FlagCorrelationID != 0 {
		props.CorrelationID = r.shortstr("correlation-id")
	}
	if f&FlagReplyTo != 0 {
		props.ReplyTo = r.shortstr("reply-to")
	}
	if f&FlagExpiration != 0 {
		props.Expiration = r.shortstr("expiration")
	}
	if f&FlagMessageID != 0 {
		props.MessageID = r.shortstr("message-id")
	}
	if f&FlagTimestamp != 0 {
		props.Timestamp = Timestamp(r.longlong("timestamp"))
	}
	if f&FlagType != 0 {
		props.Type = r.shortstr("type")
	}
	if f&FlagUserID != 0 {
		props.UserID = r.shortstr("user-id")
	}
	if f&FlagAppID != 0 {
		props.AppID = r.shortstr("app-id")
	}
	if f&FlagClusterID != 0 {
		props.ClusterID = r.shortstr("cluster-id")
	}
	if r.err != nil {
		return classID, bodySize, Properties{}, r.err
	}
	if len(r.s) != 0 {
		return classID, bodySize, Properties{}, framef("content header: cannot decode: %d octets after the properties", len(r.s))
	}
	return classID, bodySize, props, nil
}

// PeekContentHeader reads the class id and body size of a content header
// payload without decoding the properties. It checks that the class is basic
// and the weight zero (505 otherwise), and that the fixed part and a flags
// word are there (501 otherwise).
func PeekContentHeader(p []byte) (classID uint16, bodySize uint64, err error) {
	if len(p) < contentHeaderFixed {
		return 0, 0, framef("content header: cannot decode: %d octets, the fixed part takes %d", len(p), contentHeaderFixed)
	}
	classID = binary.BigEndian.Uint16(p)
	bodySize = binary.BigEndian.Uint64(p[4:])
	if classID != ClassBasic {
		return classID, bodySize, headerClassError(classID)
	}
	if w := binary.BigEndian.Uint16(p[2:]); w != 0 {
		return classID, bodySize, &FrameError{Code: UnexpectedFrame, Reason: fmt.Sprintf("content header: weight is %d, must be 0", w)}
	}
	return classID, bodySize, nil
}

func headerClassError(classID uint16) error {
	return &FrameError{Code: UnexpectedFrame, Reason: fmt.Sprintf("content header for class %d: only basic (60) carries content", classID)}
}

// AppendContentHeader appends a content header payload to dst. It panics
// with an *EncodeError when a property cannot be encoded; ValidateProperties
// reports that without panicking.
func AppendContentHeader(dst []byte, classID uint16, bodySize uint64, props *Properties) []byte {
	dst = binary.BigEndian.AppendUint16(dst, classID)
	dst = append(dst, 0, 0) // weight
	dst = binary.BigEndian.AppendUint64(dst, bodySize)
	f := props.presentFlags()
	if props.moreFlags > 0 {
		dst = binary.BigEndian.AppendUint16(dst, f|flagContinuation)
		for i := uint8(1); i < props.moreFlags; i++ {
			dst = binary.BigEndian.AppendUint16(dst, flagContinuation)
		}
		dst = append(dst, 0, 0)
	} else {
		dst = binary.BigEndian.AppendUint16(dst, f)
	}
	if f&FlagContentType != 0 {
		dst = appendShortstr(dst, props.ContentType, "content-type")
	}
	if f&FlagContentEncoding != 0 {
		dst = appendShortstr(dst, props.ContentEncoding, "content-encoding")
	}
	if f&FlagHeaders != 0 {
		dst = AppendTable(dst, props.Headers)
	}
	if f&FlagDeliveryMode != 0 {
		dst = append(dst, props.DeliveryMode)
	}
	if f&FlagPriority != 0 {
		dst = append(dst, props.Priority)
	}
	if f&FlagCorrelationID != 0 {
		dst = appendShortstr(dst, props.CorrelationID, "correlation-id")
	}
	if f&FlagReplyTo != 0 {
		dst = appendShortstr(dst, props.ReplyTo, "reply-to")
	}
	if f&FlagExpiration != 0 {
		dst = appendShortstr(dst, props.Expiration, "expiration")
	}
	if f&FlagMessageID != 0 {
		dst = appendShortstr(dst, props.MessageID, "message-id")
	}
	if f&FlagTimestamp != 0 {
		dst = binary.BigEndian.AppendUint64(dst, uint64(props.Timestamp))
	}
	if f&FlagType != 0 {
		dst = appendShortstr(dst, props.Type, "type")
	}
	if f&FlagUserID != 0 {
		dst = appendShortstr(dst, props.UserID, "user-id")
	}
	if f&FlagAppID != 0 {
		dst = appendShortstr(dst, props.AppID, "app-id")
	}
	if f&FlagClusterID != 0 {
		dst = appendShortstr(dst, props.ClusterID, "cluster-id")
	}
	return dst
}

// AppendContentHeaderFrame appends a whole content header frame to dst.
func AppendContentHeaderFrame(dst []byte, channel, classID uint16, bodySize uint64, props *Properties) []byte {
	dst, off := BeginFrame(dst, FrameHeader, channel)
	dst = AppendContentHeader(dst, classID, bodySize, props)
	return EndFrame(dst, off)
}

// AppendBodyFrames appends body as body frames on channel, each at most
// frameMax octets long including the frame overhead (0 means no limit). An
// empty body takes no frame, as the spec says.
func AppendBodyFrames(dst []byte, channel uint16, body []byte, frameMax uint32) []byte {
	chunk := len(body)
	if frameMax > FrameOverhead && uint64(frameMax-FrameOverhead) < uint64(chunk) {
		chunk = int(frameMax - FrameOverhead)
	}
	for len(body) > 0 {
		n := min(chunk, len(body))
		dst = AppendFrame(dst, FrameBody, channel, body[:n])
		body = body[n:]
	}
	return dst
}

// ValidateProperties reports what AppendContentHeader would panic on: short
// strings longer than 255 octets and header values AMQP cannot carry.
func ValidateProperties(props *Properties) error {
	for _, s := range [...]struct{ name, v string }{
		{"content-type", props.ContentType}, {"content-encoding", props.ContentEncoding},
		{"correlation-id", props.CorrelationID}, {"reply-to", props.ReplyTo},
		{"expiration", props.Expiration}, {"message-id", props.MessageID},
		{"type", props.Type}, {"user-id", props.UserID}, {"app-id", props.AppID},
		{"cluster-id", props.ClusterID},
	} {
		if len(s.v) > MaxShortstr {
			return &EncodeError{Reason: fmt.Sprintf("%s: short string of %d octets exceeds %d", s.name, len(s.v), MaxShortstr)}
		}
	}
	return ValidateTable(props.Headers)
}
