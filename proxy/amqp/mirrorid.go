package amqp

import "encoding/binary"

// MirrorIDHeader is the header that carries a replicated message's id from
// the master's core to the brokers (docs/REPLICATION.md). Consumers never
// see it: the core strips it from what it delivers.
//
// The stamp is always the first field of the headers table. Its type tag
// says whether the publisher's message had a headers table: 'l' (int64) if
// it had, 'T' (timestamp, also 64 bits) if the stamp brought the table, so
// stripping can give back the publisher's exact bytes. Both are types every
// client library reads ('L', unsigned 64, would be the natural choice but
// amqp091-go drops the connection on it), so a tool reading the broker
// directly sees an odd header, never a broken connection.
const MirrorIDHeader = "x-mirror-id"

// addedTableTag marks a stamp that brought its own headers table.
const addedTableTag = 'T'

// stampLen is the encoded field: key shortstr, tag, 8 octets.
const stampLen = 1 + 11 + 1 + 8 // len(MirrorIDHeader) == 11

// headersAt finds the headers table in a content-header payload: the offset
// of its length word and the offset just after the flag words. has is false
// when the headers property is absent (then at is where it would go).
func headersAt(p []byte) (flagsOff, at int, has bool, err error) {
	const fixed = 12 // class, weight, body size
	if len(p) < fixed+2 {
		return 0, 0, false, framef("content header of %d octets is too short", len(p))
	}
	flagsOff = fixed
	i := fixed
	for {
		if len(p) < i+2 {
			return 0, 0, false, framef("content header: truncated property flags")
		}
		w := binary.BigEndian.Uint16(p[i:])
		i += 2
		if w&flagContinuation == 0 {
			break
		}
	}
	flags := binary.BigEndian.Uint16(p[flagsOff:])
	for _, bit := range []uint16{FlagContentType, FlagContentEncoding} {
		if flags&bit == 0 {
			continue
		}
		if len(p) < i+1 || len(p) < i+1+int(p[i]) {
			return 0, 0, false, framef("content header: truncated short string property")
		}
		i += 1 + int(p[i])
	}
	if flags&FlagHeaders == 0 {
		return flagsOff, i, false, nil
	}
	if len(p) < i+4 || uint64(len(p)) < uint64(i)+4+uint64(binary.BigEndian.Uint32(p[i:])) {
		return 0, 0, false, framef("content header: truncated headers table")
	}
	return flagsOff, i, true, nil
}

// FrontKeyHeader is the header that carries a publish's front key from
// the front that took it from the client to the master's core
// (docs/FAILOVER.md, "Publishes re-sent after a move"). It has the stamp's
// layout and length: the core turns it into the x-mirror-id stamp in place,
// so no broker ever stores it.
const FrontKeyHeader = "x-mirror-pk"

// AppendStampedHeader appends to dst the content-header payload p with
// x-mirror-id = id as the first field of its headers table. p must not
// carry a stamp already.
func AppendStampedHeader(dst, p []byte, id uint64) ([]byte, error) {
	return appendStamp(dst, p, MirrorIDHeader, id)
}

// AppendFrontStamp appends to dst the content-header payload p with
// x-mirror-pk = key as the first field of its headers table.
func AppendFrontStamp(dst, p []byte, key uint64) ([]byte, error) {
	return appendStamp(dst, p, FrontKeyHeader, key)
}

// TakeFrontKey turns a front stamp (x-mirror-pk, the first field of p's
// headers table) into the x-mirror-id stamp with value id, in place, and
// returns the front's key. Without a front stamp it changes nothing and
// returns ok false.
func TakeFrontKey(p []byte, id uint64) (key uint64, ok bool, err error) {
	_, at, has, err := headersAt(p)
	if err != nil || !has {
		return 0, false, err
	}
	f := at + 4 // the first field
	n := int(binary.BigEndian.Uint32(p[at:]))
	if n < stampLen || p[f] != byte(len(FrontKeyHeader)) || string(p[f+1:f+1+len(FrontKeyHeader)]) != FrontKeyHeader {
		return 0, false, nil
	}
	if tag := p[f+1+len(FrontKeyHeader)]; tag != 'l' && tag != addedTableTag {
		return 0, false, nil
	}
	v := f + stampLen - 8
	key = binary.BigEndian.Uint64(p[v:])
	copy(p[f+1:], MirrorIDHeader)
	binary.BigEndian.PutUint64(p[v:], id)
	return key, true, nil
}

// appendStamp appends p with name = v as the first field of its headers
// table (name is one of the two stamps, both stampLen long).
func appendStamp(dst, p []byte, name string, v uint64) ([]byte, error) {
	id := v
	flagsOff, at, has, err := headersAt(p)
	if err != nil {
		return dst, err
	}
	start := len(dst)
	dst = append(dst, p[:at]...)
	tag := byte('l')
	if has {
		n := binary.BigEndian.Uint32(p[at:])
		dst = binary.BigEndian.AppendUint32(dst, n+stampLen)
		at += 4
	} else {
		tag = addedTableTag
		flags := binary.BigEndian.Uint16(p[flagsOff:])
		binary.BigEndian.PutUint16(dst[start+flagsOff:], flags|FlagHeaders)
		dst = binary.BigEndian.AppendUint32(dst, stampLen)
	}
	dst = append(dst, byte(len(name)))
	dst = append(dst, name...)
	dst = append(dst, tag)
	dst = binary.BigEndian.AppendUint64(dst, id)
	return append(dst, p[at:]...), nil
}

// findStamp returns the stamp's field [a, b) within p, if present.
func findStamp(p []byte) (flagsOff, tableAt, a, b int, ok bool, err error) {
	flagsOff, tableAt, has, err := headersAt(p)
	if err != nil || !has {
		return 0, 0, 0, 0, false, err
	}
	end := tableAt + 4 + int(binary.BigEndian.Uint32(p[tableAt:]))
	for i := tableAt + 4; i < end; {
		if i+1 > end || i+1+int(p[i]) > end {
			return 0, 0, 0, 0, false, framef("content header: headers table: truncated field name")
		}
		key := p[i+1 : i+1+int(p[i])]
		v := i + 1 + int(p[i])
		if v >= end {
			return 0, 0, 0, 0, false, framef("content header: headers table: field %q has no value", key)
		}
		rest, ok := skipValue(p[v:end])
		next := end - len(rest)
		if !ok {
			return 0, 0, 0, 0, false, framef("content header: headers table: field %q: bad or truncated value", key)
		}
		if string(key) == MirrorIDHeader && next-v == 9 && (p[v] == 'l' || p[v] == addedTableTag) {
			return flagsOff, tableAt, i, next, true, nil
		}
		i = next
	}
	return 0, 0, 0, 0, false, nil
}

// PeekMirrorID returns the id stamped in a content-header payload.
func PeekMirrorID(p []byte) (id uint64, ok bool, err error) {
	_, _, a, _, ok, err := findStamp(p)
	if !ok {
		return 0, false, err
	}
	return binary.BigEndian.Uint64(p[a+stampLen-8:]), true, nil
}

// StripMirrorID removes the stamp from a content-header payload in place
// and returns the shortened payload and the id. Without a stamp it returns
// p unchanged and ok false.
func StripMirrorID(p []byte) (out []byte, id uint64, ok bool, err error) {
	flagsOff, tableAt, a, b, ok, err := findStamp(p)
	if !ok {
		return p, 0, false, err
	}
	id = binary.BigEndian.Uint64(p[b-8:])
	addedTable := p[b-9] == addedTableTag
	n := binary.BigEndian.Uint32(p[tableAt:]) - uint32(b-a)
	if addedTable && n == 0 {
		// The stamp brought the table: take the whole property out.
		flags := binary.BigEndian.Uint16(p[flagsOff:])
		binary.BigEndian.PutUint16(p[flagsOff:], flags&^FlagHeaders)
		a = tableAt // [tableAt, b) is the length word and the stamp
	} else {
		binary.BigEndian.PutUint32(p[tableAt:], n)
	}
	m := copy(p[a:], p[b:])
	return p[:a+m], id, true, nil
}

// StripMirrorIDFrame strips the stamp from a whole content-header frame in
// place (fixing its size and frame-end) and returns the shortened frame.
func StripMirrorIDFrame(raw []byte) ([]byte, uint64, bool, error) {
	if len(raw) < FrameOverhead || raw[0] != FrameHeader {
		return raw, 0, false, framef("not a content header frame")
	}
	p, id, ok, err := StripMirrorID(raw[FrameHeaderSize : len(raw)-1])
	if !ok {
		return raw, 0, false, err
	}
	binary.BigEndian.PutUint32(raw[3:], uint32(len(p)))
	raw[FrameHeaderSize+len(p)] = FrameEnd
	return raw[:FrameOverhead+len(p)], id, true, nil
}
