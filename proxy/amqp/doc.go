// Package amqp is mirrorproxy's AMQP 0-9-1 wire codec, as RabbitMQ speaks
// the protocol: frames, every method of the spec and of RabbitMQ's
// extensions, content headers with the 14 basic properties, and field
// tables. It is pure functions over bytes plus a frame Reader; it does no
// other I/O and imports nothing else of mirrorproxy.
//
// The proxy forwards most frames as the bytes it read (Frame.Raw) and looks
// inside only the frames it acts on: the Peek functions read the arguments
// it needs per message without allocating, SetDeliveryTag and SetAckTag
// rewrite tags in place, DecodeMethod and DecodeContentHeader decode the
// rest into structs. Decoding is exact: whatever decodes encodes again to
// the same octets, so a decoded frame can be changed and re-sent, or compared.
//
// # Frames
//
// After the 8-octet protocol header ("AMQP" 0 0 9 1) both peers send frames:
//
//	 0      1         3             7                  7+size     8+size
//	+------+---------+-------------+-------------------+----------+
//	| type | channel | size        | payload           | frame-end|
//	| u8   | u16     | u32         | size octets       | 0xCE     |
//	+------+---------+-------------+-------------------+----------+
//	type: 1 method, 2 content header, 3 content body, 8 heartbeat
//
// Numbers are big-endian. A frame, header and frame-end included, is at most
// the frame_max the peers tuned to (4096 until connection.tune-ok). Reader
// reads frames from a stream, split anywhere; AppendFrame, BeginFrame and
// EndFrame write them.
//
// # Method payload
//
//	+----------+-----------+-------------------------------------+
//	| class-id | method-id | arguments                           |
//	| u16      | u16       | fields in spec order                |
//	+----------+-----------+-------------------------------------+
//
// MethodKey reads class-id<<16 | method-id, the form of the *ID constants
// (BasicPublishID). Argument types: octet u8, short u16, long u32, longlong
// u64, shortstr (u8 length + octets), longstr (u32 length + octets), table
// (u32 length + fields), and bit: consecutive bit fields share an octet, the
// first in the lowest bit. Each method is a generated struct (methods_*_gen.go,
// from internal/gen/spec.txt: run go generate after changing the spec;
// TestGeneratedCodeIsCurrent fails until then).
//
// # Content
//
// A method with content (basic.publish, basic.return, basic.deliver,
// basic.get-ok) is followed on its channel by a content header frame and then
// body frames carrying body-size octets in total:
//
//	+----------+--------+-----------+----------------+----------------+
//	| class-id | weight | body-size | property flags | property list  |
//	| u16 (60) | u16 0  | u64       | u16 [u16...]   | present props  |
//	+----------+--------+-----------+----------------+----------------+
//
// Property flag bit 15 is the first property (content-type) and bit 2 the
// 14th (cluster-id); bit 0 set means another flags word follows. Present
// properties follow in flag order: content-type, content-encoding
// (shortstr), headers (table), delivery-mode, priority (octet),
// correlation-id, reply-to, expiration, message-id (shortstr), timestamp
// (u64), type, user-id, app-id, cluster-id (shortstr).
//
// # Field tables
//
// A table is a u32 size and then fields: a shortstr key, a type octet and a
// value. Table keeps them in order, duplicates included; the type tags and
// their Go types are listed at Table.
//
// # Errors
//
// Malformed input gives a *FrameError whose Code is the reply code to close
// the connection with. Where RabbitMQ 3.10.8 answers such input with a close
// we use its code; where it drops the connection or answers inconsistently
// (unknown methods) we use the spec's code for the fault. What a real node
// was seen to do, probed by hand, and what this package returns:
//
//	input                                       RabbitMQ 3.10.8           here
//	arguments short, or octets after them       501 "cannot decode"       501
//	unknown method of class basic               501 "cannot decode"       503
//	unknown class, unknown method of others     no close: socket reset    503
//	unknown field table type                    no close: socket reset    502
//	reserved bits set, boolean octet not 0/1    accepted, ignored         502
//	content header weight not 0, class not 60   505                       505
//	content header properties short or long     541                       501
//
// The 502 rows are stricter than RabbitMQ on purpose: only canonical
// encodings decode, which keeps decoding and encoding exact inverses. Real
// clients send canonical encodings. Encoding what AMQP cannot carry (a short
// string over 255 octets, a table value of another Go type) is a programming
// error and panics with *EncodeError; ValidateMethod, ValidateTable and
// ValidateProperties check beforehand.
//
// The functions are safe for concurrent use; a Reader is not. Decoded values
// do not alias their input except where a function says it returns
// sub-slices (the Peek functions, Frame).
package amqp
