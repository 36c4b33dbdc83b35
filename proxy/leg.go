package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// Core opens the broker-side leg of a session (DESIGN §4). The front keeps
// the client's connection and the session's replayable state; the leg
// carries the session to the master's broker: straight to the broker when
// this sidecar is the master (BrokerCore), or over the peer link to the
// master's sidecar, whose own server serves the leg as a client.
//
// Open is called from the session's goroutine, once per leg, concurrently
// for different sessions.
type Core interface {
	// Open returns a connection on which the session writes the AMQP
	// protocol header next. client and local are the client connection's
	// addresses (PROXY headers, logs).
	Open(ctx context.Context, client, local net.Addr) (net.Conn, error)
	// String names where legs go, for logs.
	String() string
}

// BrokerCore opens legs as TCP connections to a broker.
type BrokerCore struct {
	// Addr is the broker's host:port.
	Addr        string
	DialTimeout time.Duration
	// SendProxyProtocol is "", "v1" or "v2": a PROXY header written first
	// so the broker sees the client's address.
	SendProxyProtocol string
	// TLS, when set, runs a TLS handshake with the broker (after the PROXY
	// header) and carries the leg inside it. An empty ServerName is
	// filled with Addr's host.
	TLS *tls.Config
}

// Open implements Core.
func (b BrokerCore) Open(ctx context.Context, client, local net.Addr) (net.Conn, error) {
	d := net.Dialer{Timeout: b.DialTimeout}
	c, err := d.DialContext(ctx, "tcp", b.Addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	if b.SendProxyProtocol != "" {
		if dl, ok := ctx.Deadline(); ok {
			c.SetWriteDeadline(dl)
		}
		if err := writeProxyHeader(c, b.SendProxyProtocol, client, local); err != nil {
			c.Close()
			return nil, fmt.Errorf("writing PROXY header to the broker: %w", err)
		}
		c.SetWriteDeadline(time.Time{})
	}
	if b.TLS != nil {
		return brokerTLS(ctx, c, b.TLS, b.Addr)
	}
	return c, nil
}

func (b BrokerCore) String() string {
	if b.TLS != nil {
		return "broker " + b.Addr + " (TLS)"
	}
	return "broker " + b.Addr
}

// dialUpstream opens the session's leg through the server's core and sends
// the protocol header on it.
func (s *session) dialUpstream(ctx context.Context) error {
	opts := &s.srv.opts
	ctx, cancel := context.WithTimeout(ctx, opts.HandshakeTimeout)
	defer cancel()
	c, err := s.route.Core.Open(ctx, s.client.RemoteAddr(), s.client.LocalAddr())
	if err != nil {
		return err
	}
	c.SetDeadline(time.Now().Add(opts.HandshakeTimeout))
	if _, err := c.Write(amqp.ProtocolHeader[:]); err != nil {
		c.Close()
		return err
	}
	r, w := amqp.NewReader(c, opts.ReadBufferSize), newOut(c, sendTimeout)
	s.leg.mu.Lock() // DropLegs and DropRemoteLegs read the leg from other goroutines
	s.up, s.ur, s.uout = c, r, w
	s.leg.mu.Unlock()
	return nil
}
