package amqp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Frame types (AMQP 0-9-1 §4.2.3).
const (
	FrameMethod    = 1
	FrameHeader    = 2
	FrameBody      = 3
	FrameHeartbeat = 8
)

const (
	// FrameEnd is the octet that closes every frame.
	FrameEnd = 0xCE
	// FrameHeaderSize is type(1) + channel(2) + size(4).
	FrameHeaderSize = 7
	// FrameOverhead is the header plus the frame-end octet.
	FrameOverhead = FrameHeaderSize + 1
	// FrameMinSize is the smallest frame_max a peer may negotiate; frames of
	// this size are allowed before tuning completes.
	FrameMinSize = 4096
)

// ProtocolHeader is what an AMQP 0-9-1 client sends first.
var ProtocolHeader = [8]byte{'A', 'M', 'Q', 'P', 0, 0, 9, 1}

// ProtocolHeader09 is AMQP 0-9's header. RabbitMQ speaks 0-9-1 to a client
// that sends it (0-9-1 is 0-9 with errata), and so does the Reader. The
// 0-8 headers ("AMQP" 1 1 8 0, and 1 1 9 1 of the 0-8 spec on the AMQP
// site) get 0-8 from RabbitMQ, a protocol this codec does not speak: they
// are bad headers here.
var ProtocolHeader09 = [8]byte{'A', 'M', 'Q', 'P', 1, 1, 0, 9}

// Frame is one frame as it sits in a Reader's buffer. Payload and Raw alias
// that buffer: they are valid until the next call to ReadFrame.
type Frame struct {
	Type    uint8
	Channel uint16
	// Payload is the frame's payload (without header and frame-end).
	Payload []byte
	// Raw is the whole frame as read: header, payload and frame-end octet.
	Raw []byte
}

// Reader reads frames from a stream. It owns one buffer that it reuses; a
// frame may be split anywhere across reads. It is not safe for concurrent use.
type Reader struct {
	src      io.Reader
	buf      []byte
	r, w     int    // unread data is buf[r:w]
	maxFrame uint32 // largest payload+overhead accepted; 0 means no limit
	err      error  // sticky read error
}

// NewReader returns a Reader with a buffer of size bytes (at least 2×FrameMinSize).
// The buffer grows, once, when a frame larger than it but within the limit arrives.
func NewReader(src io.Reader, size int) *Reader {
	if size < 2*FrameMinSize {
		size = 2 * FrameMinSize
	}
	return &Reader{src: src, buf: make([]byte, size), maxFrame: FrameMinSize}
}

// SetMaxFrameSize sets the largest frame accepted, header and frame-end
// included (the negotiated frame_max). 0 means no limit: use it only for
// peers that are trusted to obey their own frame_max.
func (r *Reader) SetMaxFrameSize(n uint32) { r.maxFrame = n }

// MaxFrameSize reports the current limit.
func (r *Reader) MaxFrameSize() uint32 { return r.maxFrame }

// Buffered reports how many bytes have been read from the stream but not yet
// returned as frames. When it is zero the next ReadFrame will block on the
// stream, so a forwarder should flush what it holds first.
func (r *Reader) Buffered() int { return r.w - r.r }

// HasFrame reports whether a whole frame is buffered, so ReadFrame will not
// touch the stream.
func (r *Reader) HasFrame() bool {
	n := r.w - r.r
	if n < FrameHeaderSize {
		return false
	}
	size := binary.BigEndian.Uint32(r.buf[r.r+3:])
	return uint64(n) >= uint64(size)+FrameOverhead
}

// ReadProtocolHeader reads the 8-octet protocol header. It returns the octets
// read and ErrBadProtocolHeader when they are neither AMQP 0-9-1's nor
// 0-9's (ProtocolHeader09).
func (r *Reader) ReadProtocolHeader() ([8]byte, error) {
	var h [8]byte
	if err := r.fill(8); err != nil {
		return h, err
	}
	copy(h[:], r.buf[r.r:r.r+8])
	r.r += 8
	if h != ProtocolHeader && h != ProtocolHeader09 {
		return h, ErrBadProtocolHeader
	}
	return h, nil
}

// ReadFrame returns the next frame. Errors are *FrameError for malformed input
// (frame-end, size, type) or the stream's own error. io.EOF is returned only at
// a frame boundary; a stream that ends mid-frame gives io.ErrUnexpectedEOF.
func (r *Reader) ReadFrame() (Frame, error) {
	if err := r.fill(FrameHeaderSize); err != nil {
		return Frame{}, err
	}
	h := r.buf[r.r : r.r+FrameHeaderSize]
	typ := h[0]
	ch := binary.BigEndian.Uint16(h[1:3])
	size := binary.BigEndian.Uint32(h[3:7])
	total := uint64(size) + FrameOverhead
	if r.maxFrame != 0 && total > uint64(r.maxFrame) {
		return Frame{}, &FrameError{Code: FrameErrorCode, Reason: fmt.Sprintf("frame size %d exceeds frame_max %d", total, r.maxFrame)}
	}
	if total > uint64(maxBuffer) {
		return Frame{}, &FrameError{Code: FrameErrorCode, Reason: fmt.Sprintf("frame size %d exceeds the proxy's limit %d", total, maxBuffer)}
	}
	if err := r.fill(int(total)); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	// As RabbitMQ: the frame-end octet and the type are judged on the
	// whole frame, and named in its words.
	raw := r.buf[r.r : r.r+int(total)]
	payload := raw[FrameHeaderSize : total-1]
	if raw[total-1] != FrameEnd {
		return Frame{}, &FrameError{Code: FrameErrorCode, Reason: fmt.Sprintf("FRAME_ERROR - type %d, %s: {invalid_frame_end_marker,%d}", typ, Octets(payload), raw[total-1])}
	}
	switch typ {
	case FrameMethod, FrameHeader, FrameBody, FrameHeartbeat:
	default:
		return Frame{}, &FrameError{Code: FrameErrorCode, Reason: fmt.Sprintf("FRAME_ERROR - type %d, %s: unknown_frame", typ, Octets(payload))}
	}
	r.r += int(total)
	return Frame{Type: typ, Channel: ch, Payload: raw[FrameHeaderSize : total-1], Raw: raw}, nil
}

// maxBuffer bounds the buffer whatever frame_max was negotiated (RabbitMQ's
// own ceiling for frame_max is far below it).
const maxBuffer = 16 << 20

// maxEmptyReads is how many reads in a row may return no data and no error
// before the stream is taken as broken (bufio allows as many).
const maxEmptyReads = 100

// fill makes at least n bytes available at buf[r:]. It moves unread bytes to
// the front only when it has to read, so frames already returned stay valid
// until the caller asks for more than is buffered.
func (r *Reader) fill(n int) error {
	if r.w-r.r >= n {
		return nil
	}
	if r.err != nil {
		if errors.Is(r.err, io.EOF) && r.w > r.r {
			// The stream ended earlier with part of a frame buffered.
			return io.ErrUnexpectedEOF
		}
		return r.err
	}
	if n > len(r.buf) {
		nb := make([]byte, max(n, 2*len(r.buf)))
		r.w = copy(nb, r.buf[r.r:r.w])
		r.r = 0
		r.buf = nb
	} else if len(r.buf)-r.r < n {
		r.w = copy(r.buf, r.buf[r.r:r.w])
		r.r = 0
	}
	for empty := 0; r.w-r.r < n; {
		m, err := r.src.Read(r.buf[r.w:])
		r.w += m
		if err != nil {
			if r.w-r.r >= n {
				r.err = err
				return nil
			}
			if errors.Is(err, io.EOF) && r.w-r.r > 0 {
				err = io.ErrUnexpectedEOF
			}
			r.err = err
			return err
		}
		if m > 0 {
			empty = 0
		} else if empty++; empty >= maxEmptyReads {
			return io.ErrNoProgress
		}
	}
	return nil
}

// AppendFrame appends a frame with the given type, channel and payload to dst.
func AppendFrame(dst []byte, typ uint8, channel uint16, payload []byte) []byte {
	dst = append(dst, typ, byte(channel>>8), byte(channel))
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	dst = append(dst, payload...)
	return append(dst, FrameEnd)
}

// HeartbeatFrame is the one heartbeat frame there is.
var HeartbeatFrame = []byte{FrameHeartbeat, 0, 0, 0, 0, 0, 0, FrameEnd}

// BeginFrame appends a frame header with a zero size to dst and returns the
// new slice and the offset of the header, for a payload appended in place;
// EndFrame then fixes the size and appends the frame-end octet.
func BeginFrame(dst []byte, typ uint8, channel uint16) ([]byte, int) {
	off := len(dst)
	return append(dst, typ, byte(channel>>8), byte(channel), 0, 0, 0, 0), off
}

// EndFrame completes a frame started with BeginFrame at off.
func EndFrame(dst []byte, off int) []byte {
	binary.BigEndian.PutUint32(dst[off+3:], uint32(len(dst)-off-FrameHeaderSize))
	return append(dst, FrameEnd)
}
