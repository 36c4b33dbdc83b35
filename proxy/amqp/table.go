package amqp

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"
)

// Table is a field table in wire order. Keys may repeat on the wire; a Table
// keeps every field as read so that encoding it again gives the same octets.
//
// Values have one Go type per field type tag, RabbitMQ's meaning of the tags:
//
//	t bool        b int8      B uint8     s int16     u uint16
//	I int32       i uint32    l int64     L uint64    f float32
//	d float64     D Decimal   S string    x []byte    A []any (array)
//	T Timestamp   F Table     V nil (void)
//
// For convenience AppendTable also encodes int as l and time.Time as T;
// decoding never produces those two. A decoded empty nested table is Table{},
// an empty array []any{}, an empty byte array []byte{}; an empty table in a
// method's arguments or the headers property decodes as nil.
type Table []Field

// Field is one key and value of a Table.
type Field struct {
	Key   string
	Value any
}

// Decimal is the D field type: Value / 10^Scale.
type Decimal struct {
	Scale uint8
	Value uint32
}

// Timestamp is the T field type and the timestamp property: seconds since
// the Unix epoch, unsigned 64-bit on the wire.
type Timestamp uint64

// Time returns t as a time.Time in UTC.
func (t Timestamp) Time() time.Time { return time.Unix(int64(t), 0).UTC() }

// TimestampOf returns the Timestamp of tm, whole seconds.
func TimestampOf(tm time.Time) Timestamp { return Timestamp(tm.Unix()) }

// Get returns the value of the first field named key, as RabbitMQ looks keys up.
func (t Table) Get(key string) (any, bool) {
	if i := t.Index(key); i >= 0 {
		return t[i].Value, true
	}
	return nil, false
}

// Index returns the position of the first field named key, or -1.
func (t Table) Index(key string) int {
	for i := range t {
		if t[i].Key == key {
			return i
		}
	}
	return -1
}

// Set replaces the value of the first field named key, or appends the field
// when there is none, and returns the table.
func (t Table) Set(key string, value any) Table {
	if i := t.Index(key); i >= 0 {
		t[i].Value = value
		return t
	}
	return append(t, Field{Key: key, Value: value})
}

// Delete removes every field named key and returns the table. It reuses t's
// array.
func (t Table) Delete(key string) Table {
	out := t[:0]
	for _, f := range t {
		if f.Key != key {
			out = append(out, f)
		}
	}
	clear(t[len(out):])
	return out
}

// Int64 returns v as an int64 when it is any of the integer field types and
// fits; RabbitMQ accepts numeric arguments such as x-message-ttl in any of them.
func Int64(v any) (int64, bool) {
	switch n := v.(type) {
	case int8:
		return int64(n), true
	case uint8:
		return int64(n), true
	case int16:
		return int64(n), true
	case uint16:
		return int64(n), true
	case int32:
		return int64(n), true
	case uint32:
		return int64(n), true
	case int64:
		return n, true
	case uint64:
		if n > math.MaxInt64 {
			return 0, false
		}
		return int64(n), true
	case int:
		return int64(n), true
	}
	return 0, false
}

// maxNesting bounds how deep tables and arrays may nest, so that hostile
// input cannot recurse the decoder into the ground. Real headers (x-death:
// an array of tables of arrays) nest three deep.
const maxNesting = 64

// DecodeTable decodes a whole encoded field table, its long size included,
// and requires that nothing follows it.
func DecodeTable(p []byte) (Table, error) {
	r := wireReader{s: string(p), what: "field table"}
	t := r.table("table")
	if r.err != nil {
		return nil, r.err
	}
	if len(r.s) != 0 {
		return nil, framef("field table: %d octets after the table", len(r.s))
	}
	return t, nil
}

// decodeTableBody decodes the fields of a table whose size was already read.
func decodeTableBody(s string, depth int) (Table, error) {
	if len(s) == 0 {
		return nil, nil
	}
	t := make(Table, 0, countFields(s))
	for len(s) > 0 {
		n := int(s[0])
		if 1+n > len(s) {
			return nil, framef("cannot decode field name: needs %d octets, %d left", 1+n, len(s))
		}
		key := s[1 : 1+n]
		v, rest, err := decodeValue(s[1+n:], depth)
		if err != nil {
			return nil, prefixError(err, fmt.Sprintf("field %q", key))
		}
		t = append(t, Field{Key: key, Value: v})
		s = rest
	}
	return t, nil
}

// decodeArrayBody decodes the values of an array whose size was already read.
func decodeArrayBody(s string, depth int) ([]any, error) {
	a := make([]any, 0, countValues(s))
	for i := 0; len(s) > 0; i++ {
		v, rest, err := decodeValue(s, depth)
		if err != nil {
			return nil, prefixError(err, fmt.Sprintf("array element %d", i))
		}
		a = append(a, v)
		s = rest
	}
	return a, nil
}

// fixedSize is the size of the value after the tag for fixed-size types, 0
// for void, -1 for the sized types (S x A F) and -2 for unknown tags.
func fixedSize(tag byte) int {
	switch tag {
	case 't', 'b', 'B':
		return 1
	case 's', 'u':
		return 2
	case 'I', 'i', 'f':
		return 4
	case 'D':
		return 5
	case 'l', 'L', 'd', 'T':
		return 8
	case 'V':
		return 0
	case 'S', 'x', 'A', 'F':
		return -1
	}
	return -2
}

// skipValue returns the input after one tagged value, or ok false. It
// reads decoder input (string) and frames in place ([]byte) alike.
func skipValue[T string | []byte](s T) (T, bool) {
	if len(s) == 0 {
		return s, false
	}
	n := fixedSize(s[0])
	s = s[1:]
	if n == -1 {
		if len(s) < 4 {
			return s, false
		}
		n = int(uint32(s[0])<<24 | uint32(s[1])<<16 | uint32(s[2])<<8 | uint32(s[3]))
		s = s[4:]
		if n < 0 {
			return s, false
		}
	}
	if n < 0 || n > len(s) {
		return s, false
	}
	return s[n:], true
}

// countFields counts the well-formed fields at the start of a table body, to
// size the Table in one allocation.
func countFields(s string) int {
	c := 0
	for len(s) > 0 {
		n := int(s[0])
		if 1+n > len(s) {
			break
		}
		var ok bool
		if s, ok = skipValue(s[1+n:]); !ok {
			break
		}
		c++
	}
	return c
}

// countValues is countFields for an array body.
func countValues(s string) int {
	c := 0
	for len(s) > 0 {
		var ok bool
		if s, ok = skipValue(s); !ok {
			break
		}
		c++
	}
	return c
}

// decodeValue decodes one tagged value and returns it and the rest of s.
func decodeValue(s string, depth int) (any, string, error) {
	if len(s) == 0 {
		return nil, s, framef("cannot decode field value: no type octet")
	}
	tag := s[0]
	s = s[1:]
	size := fixedSize(tag)
	switch size {
	case -2:
		return nil, s, syntaxf("unknown field value type %s", tagName(tag))
	case -1:
		if len(s) < 4 {
			return nil, s, framef("cannot decode %c value: needs 4 octets of size, %d left", tag, len(s))
		}
		n := uint64(be32(s))
		s = s[4:]
		if n > uint64(len(s)) {
			return nil, s, framef("cannot decode %c value: needs %d octets, %d left", tag, n, len(s))
		}
		body, rest := s[:n], s[n:]
		if (tag == 'A' || tag == 'F') && depth+1 >= maxNesting {
			return nil, rest, syntaxf("tables and arrays nest deeper than %d", maxNesting)
		}
		switch tag {
		case 'S':
			return body, rest, nil
		case 'x':
			return []byte(body), rest, nil
		case 'A':
			a, err := decodeArrayBody(body, depth+1)
			return a, rest, err
		default: // 'F'
			t, err := decodeTableBody(body, depth+1)
			if t == nil && err == nil {
				t = Table{}
			}
			return t, rest, err
		}
	}
	if len(s) < size {
		return nil, s, framef("cannot decode %c value: needs %d octets, %d left", tag, size, len(s))
	}
	rest := s[size:]
	switch tag {
	case 't':
		switch s[0] {
		case 0:
			return false, rest, nil
		case 1:
			return true, rest, nil
		}
		return nil, rest, syntaxf("boolean value octet is %d, not 0 or 1", s[0])
	case 'b':
		return int8(s[0]), rest, nil
	case 'B':
		return s[0], rest, nil
	case 's':
		return int16(be16(s)), rest, nil
	case 'u':
		return be16(s), rest, nil
	case 'I':
		return int32(be32(s)), rest, nil
	case 'i':
		return be32(s), rest, nil
	case 'f':
		return math.Float32frombits(be32(s)), rest, nil
	case 'D':
		return Decimal{Scale: s[0], Value: be32(s[1:])}, rest, nil
	case 'l':
		return int64(be64(s)), rest, nil
	case 'L':
		return be64(s), rest, nil
	case 'd':
		return math.Float64frombits(be64(s)), rest, nil
	case 'T':
		return Timestamp(be64(s)), rest, nil
	}
	return nil, rest, nil // 'V'
}

func tagName(tag byte) string {
	if tag >= 0x21 && tag < 0x7f {
		return fmt.Sprintf("'%c' (0x%02x)", tag, tag)
	}
	return fmt.Sprintf("0x%02x", tag)
}

// AppendTable appends t encoded, its long size first. It panics with an
// *EncodeError for a key longer than 255 octets or a value of a Go type with
// no field type; ValidateTable reports those without panicking.
func AppendTable(dst []byte, t Table) []byte {
	off := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	for _, f := range t {
		dst = appendShortstr(dst, f.Key, "field table key")
		dst = appendValue(dst, f.Value, f.Key)
	}
	binary.BigEndian.PutUint32(dst[off:], uint32(len(dst)-off-4))
	return dst
}

func appendValue(dst []byte, v any, key string) []byte {
	switch v := v.(type) {
	case bool:
		if v {
			return append(dst, 't', 1)
		}
		return append(dst, 't', 0)
	case int8:
		return append(dst, 'b', byte(v))
	case uint8:
		return append(dst, 'B', v)
	case int16:
		return binary.BigEndian.AppendUint16(append(dst, 's'), uint16(v))
	case uint16:
		return binary.BigEndian.AppendUint16(append(dst, 'u'), v)
	case int32:
		return binary.BigEndian.AppendUint32(append(dst, 'I'), uint32(v))
	case uint32:
		return binary.BigEndian.AppendUint32(append(dst, 'i'), v)
	case int64:
		return binary.BigEndian.AppendUint64(append(dst, 'l'), uint64(v))
	case int:
		return binary.BigEndian.AppendUint64(append(dst, 'l'), uint64(v))
	case uint64:
		return binary.BigEndian.AppendUint64(append(dst, 'L'), v)
	case float32:
		return binary.BigEndian.AppendUint32(append(dst, 'f'), math.Float32bits(v))
	case float64:
		return binary.BigEndian.AppendUint64(append(dst, 'd'), math.Float64bits(v))
	case Decimal:
		return binary.BigEndian.AppendUint32(append(dst, 'D', v.Scale), v.Value)
	case string:
		return appendLongstr(append(dst, 'S'), v)
	case []byte:
		dst = binary.BigEndian.AppendUint32(append(dst, 'x'), uint32(len(v)))
		return append(dst, v...)
	case []any:
		dst = append(dst, 'A', 0, 0, 0, 0)
		off := len(dst)
		for _, e := range v {
			dst = appendValue(dst, e, key)
		}
		binary.BigEndian.PutUint32(dst[off-4:], uint32(len(dst)-off))
		return dst
	case Timestamp:
		return binary.BigEndian.AppendUint64(append(dst, 'T'), uint64(v))
	case time.Time:
		return binary.BigEndian.AppendUint64(append(dst, 'T'), uint64(v.Unix()))
	case Table:
		return AppendTable(append(dst, 'F'), v)
	case nil:
		return append(dst, 'V')
	}
	panic(&EncodeError{Reason: fmt.Sprintf("field %q: no field type for Go type %T", key, v)})
}

// ValidateTable reports what AppendTable would panic on: keys longer than 255
// octets and values of Go types with no field type, at any depth.
func ValidateTable(t Table) error {
	for _, f := range t {
		if len(f.Key) > MaxShortstr {
			return &EncodeError{Reason: fmt.Sprintf("field table key of %d octets exceeds %d", len(f.Key), MaxShortstr)}
		}
		if err := validateValue(f.Value, f.Key); err != nil {
			return err
		}
	}
	return nil
}

func validateValue(v any, key string) error {
	switch v := v.(type) {
	case bool, int8, uint8, int16, uint16, int32, uint32, int64, int, uint64,
		float32, float64, Decimal, string, []byte, Timestamp, time.Time, nil:
		return nil
	case []any:
		for _, e := range v {
			if err := validateValue(e, key); err != nil {
				return err
			}
		}
		return nil
	case Table:
		return ValidateTable(v)
	}
	return &EncodeError{Reason: fmt.Sprintf("field %q: no field type for Go type %T", key, v)}
}
