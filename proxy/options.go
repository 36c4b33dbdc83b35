package proxy

import (
	"crypto/tls"
	"net/netip"
	"time"

	"github.com/rs/zerolog"
)

// ProxyProtocolMode says whether clients' connections start with a PROXY
// protocol header (from a load balancer).
type ProxyProtocolMode string

const (
	// ProxyProtocolOff: no header is read; a header is bad input.
	ProxyProtocolOff ProxyProtocolMode = "off"
	// ProxyProtocolOptional: a header is read when a trusted peer sends one.
	ProxyProtocolOptional ProxyProtocolMode = "optional"
	// ProxyProtocolRequired: a trusted peer must send one; untrusted peers are refused.
	ProxyProtocolRequired ProxyProtocolMode = "required"
)

// Options are a Server's settings. The zero value of every field but Upstream
// means "the default" (see DefaultOptions).
type Options struct {
	// Upstream is the broker's address, host:port. It may be empty when
	// Core is set.
	Upstream string
	// Core opens each session's broker-side leg; nil means a BrokerCore
	// to Upstream with DialTimeout and SendProxyProtocol.
	Core Core
	// DialTimeout bounds connecting to the broker.
	DialTimeout time.Duration
	// HandshakeTimeout bounds a client's protocol header, PROXY header and
	// connection.start-ok … connection.open; a client that has not opened its
	// connection by then is closed.
	HandshakeTimeout time.Duration
	// Heartbeat is the largest heartbeat interval offered to clients in
	// connection.tune (the broker's own value if it is smaller); 0 keeps the broker's.
	Heartbeat time.Duration
	// UpstreamHeartbeat is the interval the proxy asks the broker for.
	UpstreamHeartbeat time.Duration
	// FrameMax caps frame_max on both sides.
	FrameMax uint32
	// ChannelMax caps channel_max offered to clients (0 keeps the broker's).
	ChannelMax uint16
	// MaxUnconfirmed bounds the unconfirmed publishes one session keeps for
	// replay, in bytes of content. A session over the bound keeps running but
	// can no longer be moved by a failover.
	MaxUnconfirmed int
	// ReadBufferSize and WriteBufferSize size each connection's buffers.
	ReadBufferSize int

	// ProxyProtocol reads PROXY headers from clients in TrustedProxies.
	ProxyProtocol      ProxyProtocolMode
	TrustedProxies     []netip.Prefix
	ProxyHeaderTimeout time.Duration
	// SendProxyProtocol is "", "v1" or "v2": the header written to the broker
	// so it sees the client's real address.
	SendProxyProtocol string
	// UpstreamTLS, when set, makes the default core's legs TLS connections
	// to the broker (BrokerCore.TLS).
	UpstreamTLS *tls.Config

	// ShutdownGrace bounds how long Shutdown lets sessions finish before
	// closing them with 320 CONNECTION_FORCED.
	ShutdownGrace time.Duration

	// Resume moves a session whose broker side is lost to a new leg
	// through the server's current route, keeping the client's connection
	// (rehome.go), instead of closing it with 320; ResumeTimeout bounds
	// the wait for a master to move to.
	Resume        bool
	ResumeTimeout time.Duration

	// Replicator, when set, makes this the master's core: publishes are
	// stamped and replicated, confirms wait for the ring (docs/REPLICATION.md).
	Replicator Replicator

	// Logger receives the server's logs; each session gets a child logger.
	Logger zerolog.Logger
}

// DefaultOptions are the values used for zero fields.
var DefaultOptions = Options{
	DialTimeout:        5 * time.Second,
	HandshakeTimeout:   10 * time.Second,
	Heartbeat:          60 * time.Second,
	UpstreamHeartbeat:  30 * time.Second,
	FrameMax:           131072,
	MaxUnconfirmed:     16 << 20,
	ReadBufferSize:     256 << 10,
	ProxyProtocol:      ProxyProtocolOff,
	ProxyHeaderTimeout: 5 * time.Second,
	ResumeTimeout:      15 * time.Second,
	ShutdownGrace:      30 * time.Second,
}
