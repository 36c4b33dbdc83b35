package replicate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
	"github.com/rs/zerolog"
)

// brokerConn is the mirror's own AMQP 0-9-1 client connection, written on
// proxy/amqp rather than amqp091-go because a mirror must send and receive
// content headers as raw octets: amqp091-go re-encodes the headers table
// from a Go map (field order lost, duplicates lost, no 'L' unsigned 64-bit
// values — the type x-mirror-id takes when the core added the table) and
// fails the whole connection when it reads an 'L' value. Only what the
// mirror needs is here: PLAIN login, channels, synchronous requests,
// publisher confirms, consumers whose bodies are skipped, and closing.
//
// One goroutine (read) owns the socket's read side and calls the channels'
// handlers; handlers run on it and must not make requests (rpc) on the
// same connection. Writes are serialised by wmu.
type brokerConn struct {
	nc       net.Conn
	rd       *amqp.Reader
	frameMax uint32
	log      zerolog.Logger

	wmu  sync.Mutex
	wbuf []byte

	mu     sync.Mutex
	chans  map[uint16]*brokerChan
	nextID uint16
	err    error // why the connection ended; set once

	done chan struct{} // closed when read has returned
}

// BrokerError is a connection.close or channel.close the mirror's broker
// sent: the reply code and text, and the method that failed.
type BrokerError struct {
	Code   uint16
	Text   string
	Method string
	// Connection is true for connection.close (the whole connection is gone).
	Connection bool
}

func (e *BrokerError) Error() string {
	scope := "channel"
	if e.Connection {
		scope = "connection"
	}
	if e.Method != "" {
		return fmt.Sprintf("mirror broker closed the %s: %d %s (on %s)", scope, e.Code, e.Text, e.Method)
	}
	return fmt.Sprintf("mirror broker closed the %s: %d %s", scope, e.Code, e.Text)
}

// errConnClosed is the error of a connection closed by us.
var errConnClosed = errors.New("replicate: mirror broker connection closed")

// maxMirrorFrame caps frame_max on the mirror's connections.
const maxMirrorFrame = 128 << 10

// dialBroker opens a connection to the broker at rawURL, on vhost (the
// URL's own vhost is ignored).
func dialBroker(ctx context.Context, rawURL, vhost string, log zerolog.Logger) (*brokerConn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("replicate: broker URL: %w", err)
	}
	if u.Scheme != "amqp" {
		return nil, fmt.Errorf("replicate: broker URL scheme %q: only amqp is supported", u.Scheme)
	}
	user, pass := "guest", "guest"
	if u.User != nil {
		user = u.User.Username()
		pass, _ = u.User.Password()
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "5672")
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, fmt.Errorf("replicate: dial mirror broker: %w", err)
	}
	c := &brokerConn{nc: nc, rd: amqp.NewReader(nc, 64<<10), log: log, chans: map[uint16]*brokerChan{}, done: make(chan struct{})}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	} else {
		_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	err = c.handshake(user, pass, vhost)
	stop()
	if err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("replicate: open mirror broker connection to vhost %q: %w", vhost, err)
	}
	_ = nc.SetDeadline(time.Time{})
	go c.read()
	return c, nil
}

// next reads the next method on channel 0 during the handshake.
func (c *brokerConn) next() (amqp.Method, error) {
	for {
		f, err := c.rd.ReadFrame()
		if err != nil {
			return nil, err
		}
		if f.Type == amqp.FrameHeartbeat {
			continue
		}
		if f.Type != amqp.FrameMethod || f.Channel != 0 {
			return nil, fmt.Errorf("unexpected frame type %d on channel %d during the handshake", f.Type, f.Channel)
		}
		m, err := amqp.DecodeMethod(f.Payload)
		if err != nil {
			return nil, err
		}
		if cl, ok := m.(*amqp.ConnectionClose); ok {
			return nil, &BrokerError{Code: cl.ReplyCode, Text: cl.ReplyText, Connection: true}
		}
		return m, nil
	}
}

func (c *brokerConn) handshake(user, pass, vhost string) error {
	if _, err := c.nc.Write(amqp.ProtocolHeader[:]); err != nil {
		return err
	}
	m, err := c.next()
	if err != nil {
		return err
	}
	if _, ok := m.(*amqp.ConnectionStart); !ok {
		return fmt.Errorf("expected connection.start, got %s", m.Name())
	}
	caps := amqp.Table{
		{Key: "publisher_confirms", Value: true},
		{Key: "basic.nack", Value: true},
		{Key: "consumer_cancel_notify", Value: true},
		{Key: "connection.blocked", Value: true},
	}
	if err := c.writeMethod(0, &amqp.ConnectionStartOk{
		ClientProperties: amqp.Table{
			{Key: "product", Value: "mirrorproxy mirror"},
			{Key: "capabilities", Value: caps},
			{Key: "connection_name", Value: "mirrorproxy mirror apply"},
		},
		Mechanism: "PLAIN", Response: "\x00" + user + "\x00" + pass, Locale: "en_US",
	}); err != nil {
		return err
	}
	if m, err = c.next(); err != nil {
		return err
	}
	tune, ok := m.(*amqp.ConnectionTune)
	if !ok {
		return fmt.Errorf("expected connection.tune, got %s", m.Name())
	}
	c.frameMax = maxMirrorFrame
	if tune.FrameMax != 0 && tune.FrameMax < c.frameMax {
		c.frameMax = tune.FrameMax
	}
	chMax := tune.ChannelMax
	if chMax == 0 {
		chMax = 2047
	}
	// Heartbeats off: a dead broker is the failure detector's business
	// (failover/), and a closed socket ends this connection at once.
	if err := c.writeMethod(0, &amqp.ConnectionTuneOk{ChannelMax: chMax, FrameMax: c.frameMax}); err != nil {
		return err
	}
	c.rd.SetMaxFrameSize(c.frameMax)
	if err := c.writeMethod(0, &amqp.ConnectionOpen{VirtualHost: vhost}); err != nil {
		return err
	}
	if m, err = c.next(); err != nil {
		return err
	}
	if _, ok := m.(*amqp.ConnectionOpenOk); !ok {
		return fmt.Errorf("expected connection.open-ok, got %s", m.Name())
	}
	return nil
}

// write sends whole frames built by build into the connection's buffer.
func (c *brokerConn) write(build func(b []byte) []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf = build(c.wbuf[:0])
	_, err := c.nc.Write(c.wbuf)
	if cap(c.wbuf) > 1<<20 {
		c.wbuf = nil // do not keep a large body's buffer
	}
	if err != nil {
		return fmt.Errorf("replicate: write to mirror broker: %w", err)
	}
	return nil
}

func (c *brokerConn) writeMethod(ch uint16, m amqp.Method) error {
	return c.write(func(b []byte) []byte { return amqp.AppendMethodFrame(b, ch, m) })
}

// fail records why the connection ended (first reason wins) and closes the socket.
func (c *brokerConn) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	_ = c.nc.Close()
}

// Err returns why the connection ended, or nil while it is open.
func (c *brokerConn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// close closes the connection politely (connection.close, waiting briefly
// for close-ok) and waits for the reader to end.
func (c *brokerConn) close() {
	if c.Err() == nil {
		_ = c.nc.SetWriteDeadline(time.Now().Add(2 * time.Second))
		_ = c.writeMethod(0, &amqp.ConnectionClose{ReplyCode: 200, ReplyText: "mirrorproxy mirror closing"})
		select {
		case <-c.done:
		case <-time.After(2 * time.Second):
		}
	}
	c.fail(errConnClosed)
	<-c.done
}

// read is the connection's reader goroutine; it ends when the socket does.
func (c *brokerConn) read() {
	defer close(c.done)
	err := c.readLoop()
	c.fail(err)
	c.mu.Lock()
	err = c.err
	chans := c.chans
	c.chans = map[uint16]*brokerChan{}
	c.mu.Unlock()
	for _, ch := range chans {
		ch.closed(err)
	}
}

func (c *brokerConn) readLoop() error {
	for {
		f, err := c.rd.ReadFrame()
		if err != nil {
			return err
		}
		if f.Type == amqp.FrameHeartbeat {
			continue
		}
		if f.Channel == 0 {
			if f.Type != amqp.FrameMethod {
				return fmt.Errorf("mirror broker sent frame type %d on channel 0", f.Type)
			}
			m, err := amqp.DecodeMethod(f.Payload)
			if err != nil {
				return err
			}
			switch m := m.(type) {
			case *amqp.ConnectionClose:
				_ = c.writeMethod(0, &amqp.ConnectionCloseOk{})
				return &BrokerError{Code: m.ReplyCode, Text: m.ReplyText, Method: amqp.MethodName(uint32(m.FailingClassID)<<16 | uint32(m.FailingMethodID)), Connection: true}
			case *amqp.ConnectionCloseOk:
				return errConnClosed
			case *amqp.ConnectionBlocked:
				c.log.Warn().Str("reason", m.Reason).Msg("mirror broker blocked this connection")
			case *amqp.ConnectionUnblocked:
				c.log.Info().Msg("mirror broker unblocked this connection")
			}
			continue
		}
		c.mu.Lock()
		ch := c.chans[f.Channel]
		c.mu.Unlock()
		if ch == nil {
			continue // a channel we closed; late frames
		}
		if err := ch.frame(f); err != nil {
			return err
		}
	}
}

// openChannel opens a channel with the given handlers.
func (c *brokerConn) openChannel(ctx context.Context, h chanHandlers) (*brokerChan, error) {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	var id uint16
	for range 0xffff {
		c.nextID++
		if c.nextID == 0 {
			c.nextID = 1
		}
		if c.chans[c.nextID] == nil {
			id = c.nextID
			break
		}
	}
	if id == 0 {
		c.mu.Unlock()
		return nil, errors.New("replicate: no free channel on the mirror broker connection")
	}
	ch := &brokerChan{c: c, id: id, h: h, replies: make(chan amqp.Method, 1), gone: make(chan struct{})}
	c.chans[id] = ch
	c.mu.Unlock()
	if _, err := ch.rpc(ctx, &amqp.ChannelOpen{}); err != nil {
		return nil, err
	}
	return ch, nil
}

// chanHandlers are called on the connection's reader goroutine.
type chanHandlers struct {
	// async receives basic.ack, basic.nack and basic.cancel from the broker.
	async func(m amqp.Method)
	// deliver receives a delivery once its body has been read; header is
	// the content header payload and body the body when keepBody is set
	// (nil otherwise: the mirror never keeps bodies), both valid during the
	// call only.
	deliver  func(d *amqp.BasicDeliver, header, body []byte)
	keepBody bool
	// closed is called once when the channel or its connection is gone.
	closed func(err error)
}

// brokerChan is one channel of a brokerConn.
type brokerChan struct {
	c  *brokerConn
	id uint16
	h  chanHandlers

	rpcMu   sync.Mutex       // one synchronous request at a time
	replies chan amqp.Method // the reply to the request in flight

	once sync.Once
	gone chan struct{} // closed when the channel is closed
	err  error         // why; written before gone is closed

	// content in progress (reader goroutine only)
	dlv       *amqp.BasicDeliver
	header    []byte
	body      []byte
	remaining uint64
	inContent bool
}

// frame handles one frame of the channel on the reader goroutine.
func (ch *brokerChan) frame(f amqp.Frame) error {
	switch f.Type {
	case amqp.FrameHeader:
		if !ch.inContent {
			return fmt.Errorf("mirror broker sent a content header without a method on channel %d", ch.id)
		}
		_, size, err := amqp.PeekContentHeader(f.Payload)
		if err != nil {
			return err
		}
		ch.header = append(ch.header[:0], f.Payload...)
		ch.body = ch.body[:0]
		ch.remaining = size
		if size == 0 {
			ch.contentDone()
		}
		return nil
	case amqp.FrameBody:
		if !ch.inContent || uint64(len(f.Payload)) > ch.remaining {
			return fmt.Errorf("mirror broker sent an unexpected body frame on channel %d", ch.id)
		}
		ch.remaining -= uint64(len(f.Payload))
		if ch.h.keepBody {
			ch.body = append(ch.body, f.Payload...)
		}
		if ch.remaining == 0 {
			ch.contentDone()
		}
		return nil
	case amqp.FrameMethod:
	default:
		return fmt.Errorf("mirror broker sent frame type %d on channel %d", f.Type, ch.id)
	}
	m, err := amqp.DecodeMethod(f.Payload)
	if err != nil {
		return err
	}
	switch m := m.(type) {
	case *amqp.BasicDeliver:
		ch.dlv, ch.inContent = m, true
		return nil
	case *amqp.BasicReturn:
		ch.dlv, ch.inContent = nil, true // the content is skipped
		return nil
	case *amqp.ChannelClose:
		_ = ch.c.writeMethod(ch.id, &amqp.ChannelCloseOk{})
		ch.c.drop(ch.id)
		ch.closed(&BrokerError{Code: m.ReplyCode, Text: m.ReplyText, Method: amqp.MethodName(uint32(m.FailingClassID)<<16 | uint32(m.FailingMethodID))})
		return nil
	case *amqp.ChannelCloseOk:
		ch.c.drop(ch.id)
		ch.closed(errChanClosed)
		return nil
	case *amqp.ChannelFlow:
		return ch.c.writeMethod(ch.id, &amqp.ChannelFlowOk{Active: m.Active})
	case *amqp.BasicAck, *amqp.BasicNack, *amqp.BasicCancel:
		if ch.h.async != nil {
			ch.h.async(m)
		}
		return nil
	}
	if strings.HasSuffix(m.Name(), "-ok") {
		select {
		case ch.replies <- m:
		default:
			return fmt.Errorf("mirror broker sent %s on channel %d with no request waiting", m.Name(), ch.id)
		}
	}
	return nil
}

func (ch *brokerChan) contentDone() {
	if ch.dlv != nil && ch.h.deliver != nil {
		var body []byte
		if ch.h.keepBody {
			body = ch.body
		}
		ch.h.deliver(ch.dlv, ch.header, body)
	}
	ch.dlv, ch.inContent = nil, false
}

var errChanClosed = errors.New("replicate: mirror broker channel closed")

func (c *brokerConn) drop(id uint16) {
	c.mu.Lock()
	delete(c.chans, id)
	c.mu.Unlock()
}

func (ch *brokerChan) closed(err error) {
	ch.once.Do(func() {
		ch.err = err
		close(ch.gone)
		if ch.h.closed != nil {
			ch.h.closed(err)
		}
	})
}

// Err returns why the channel closed, or nil while it is open.
func (ch *brokerChan) Err() error {
	select {
	case <-ch.gone:
		return ch.err
	default:
		return nil
	}
}

// rpc sends a synchronous method and waits for its reply.
func (ch *brokerChan) rpc(ctx context.Context, m amqp.Method) (amqp.Method, error) {
	ch.rpcMu.Lock()
	defer ch.rpcMu.Unlock()
	if err := ch.Err(); err != nil {
		return nil, err
	}
	if err := ch.c.writeMethod(ch.id, m); err != nil {
		return nil, err
	}
	select {
	case r := <-ch.replies:
		return r, nil
	case <-ch.gone:
		if _, ok := m.(*amqp.ChannelClose); ok && errors.Is(ch.err, errChanClosed) {
			return &amqp.ChannelCloseOk{}, nil
		}
		return nil, ch.err
	case <-ctx.Done():
		return nil, fmt.Errorf("replicate: %s on the mirror broker: %w", m.Name(), ctx.Err())
	}
}

// send writes an asynchronous method (basic.ack, basic.reject, basic.nack).
func (ch *brokerChan) send(m amqp.Method) error {
	return ch.c.writeMethod(ch.id, m)
}

// publish writes basic.publish with the content header payload as given
// and the body split to the connection's frame_max.
func (ch *brokerChan) publish(exchange, key string, mandatory bool, header, body []byte) error {
	return ch.c.write(func(b []byte) []byte {
		b = amqp.AppendMethodFrame(b, ch.id, &amqp.BasicPublish{Exchange: exchange, RoutingKey: key, Mandatory: mandatory})
		b = amqp.AppendFrame(b, amqp.FrameHeader, ch.id, header)
		return amqp.AppendBodyFrames(b, ch.id, body, ch.c.frameMax)
	})
}

// close closes the channel and waits for close-ok (or the connection's end).
func (ch *brokerChan) close(ctx context.Context) error {
	if ch.Err() != nil {
		return nil //nolint:nilerr // already closed: nothing left to close
	}
	_, err := ch.rpc(ctx, &amqp.ChannelClose{ReplyCode: 200, ReplyText: "mirrorproxy mirror closing"})
	if err != nil && errors.Is(err, errChanClosed) {
		return nil
	}
	return err
}
