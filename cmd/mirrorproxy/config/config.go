package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/proxy"
)

// Config is the whole configuration, as data. The yaml tags are the file's
// keys; the decoder in this package reads them (not yaml's reflection), so
// the only field types are the ones it knows: string, int, time.Duration,
// uint16, uint32, ByteSize, []netip.Prefix, map[string]any (a policy
// definition), nested sections and lists of sections.
type Config struct {
	Listen Listen `yaml:"listen"`
	// TLS is the amqps listener for clients (tls.go).
	TLS           TLS           `yaml:"tls"`
	Upstream      Upstream      `yaml:"upstream"`
	ProxyProtocol ProxyProtocol `yaml:"proxy_protocol"`
	Limits        Limits        `yaml:"limits"`
	// ShutdownGrace bounds how long a shutdown lets sessions finish before
	// they are closed with 320 CONNECTION_FORCED.
	ShutdownGrace time.Duration `yaml:"shutdown_grace"`
	Log           Log           `yaml:"log"`

	// The group: this node, its peers, the ring, the views, the sidecar's
	// broker credentials and the mirroring policies (group.go).
	Node     Node         `yaml:"node"`
	Peers    []Peer       `yaml:"peers"`
	GM       GM           `yaml:"gm"`
	Raft     Raft         `yaml:"raft"`
	Broker   Broker       `yaml:"broker"`
	Policies []PolicySpec `yaml:"policies"`

	// Admin is the admin HTTP API of a node of a group (admin.go).
	Admin Admin `yaml:"admin"`

	// File is the file the config was read from; "" when none was.
	File string `yaml:"-"`

	// where records, per key path, where its value was set: a file line or
	// a flag. Keys left at their defaults are absent.
	where map[string]origin
	// failed holds the keys whose value could not be decoded (they keep
	// their defaults); Validate does not judge other keys by them.
	failed map[string]bool
	// decodeErrs are the file's decoding problems, reported again by
	// Validate so that one call gives the whole list.
	decodeErrs Errors
}

// Listen is where clients connect.
type Listen struct {
	// Address is host:port; an empty host listens on every interface.
	Address string `yaml:"address"`
}

// Upstream is the broker this sidecar fronts.
type Upstream struct {
	// Address is the broker's host:port.
	Address string `yaml:"address"`
	// DialTimeout bounds connecting to the broker.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// ProxyProtocol is the PROXY header written to the broker so it sees
	// clients' real addresses: off, v1 or v2.
	ProxyProtocol string `yaml:"proxy_protocol"`
	// TLS makes the connections to the broker TLS (tls.go).
	TLS UpstreamTLS `yaml:"tls"`
}

// ProxyProtocol is how PROXY headers from load balancers are read.
type ProxyProtocol struct {
	// Mode is off, optional or required (see proxy.ProxyProtocolMode).
	Mode string `yaml:"mode"`
	// Trusted lists the load balancers' addresses; only they may send a
	// header. A bare address is a single host. Empty trusts nobody.
	Trusted []netip.Prefix `yaml:"trusted"`
	// HeaderTimeout bounds waiting for the header.
	HeaderTimeout time.Duration `yaml:"header_timeout"`
}

// Limits bound what one client session may do and how it is negotiated.
type Limits struct {
	HandshakeTimeout  time.Duration `yaml:"handshake_timeout"`
	Heartbeat         time.Duration `yaml:"heartbeat"`
	UpstreamHeartbeat time.Duration `yaml:"upstream_heartbeat"`
	FrameMax          uint32        `yaml:"frame_max"`
	// ChannelMax 0 keeps the broker's value.
	ChannelMax     uint16   `yaml:"channel_max"`
	MaxUnconfirmed ByteSize `yaml:"max_unconfirmed"`
}

// Log configures the process's logger.
type Log struct {
	// Level is trace, debug, info, warn or error.
	Level string `yaml:"level"`
	// Format is json, console, or auto (console when stderr is a terminal,
	// json otherwise).
	Format string `yaml:"format"`
}

// DefaultListen is the default listen address: loopback, so that a sidecar
// started with no configuration is not reachable from other hosts, and port
// 5673, so that it does not collide with a broker on 5672 on the same host.
// Production sidecars usually set listen.address to ":5672" and move the
// broker to another port or to loopback.
const DefaultListen = "127.0.0.1:5673"

// DefaultUpstream is the broker next to the sidecar.
const DefaultUpstream = "127.0.0.1:5672"

// Default returns the configuration used for every key a file or flag does
// not set. Its values are the ones config.example.yaml documents.
func Default() *Config {
	d := proxy.DefaultOptions
	return &Config{
		Listen: Listen{Address: DefaultListen},
		TLS:    TLS{ReloadInterval: DefaultTLSReloadInterval},
		Upstream: Upstream{
			Address:       DefaultUpstream,
			DialTimeout:   d.DialTimeout,
			ProxyProtocol: "off",
		},
		ProxyProtocol: ProxyProtocol{
			Mode:          string(proxy.ProxyProtocolOff),
			HeaderTimeout: d.ProxyHeaderTimeout,
		},
		Limits: Limits{
			HandshakeTimeout:  d.HandshakeTimeout,
			Heartbeat:         d.Heartbeat,
			UpstreamHeartbeat: d.UpstreamHeartbeat,
			FrameMax:          d.FrameMax,
			ChannelMax:        d.ChannelMax,
			MaxUnconfirmed:    ByteSize(d.MaxUnconfirmed),
		},
		ShutdownGrace: d.ShutdownGrace,
		Log:           Log{Level: "info", Format: "auto"},
		GM:            GM{Window: 4096, HeartbeatInterval: 100 * time.Millisecond},
		Raft:          Raft{FailureTimeout: 2 * time.Second, LeaseDuration: time.Second},
		Admin:         Admin{Address: DefaultAdmin},
		where:         map[string]origin{},
	}
}

// Options builds the proxy server's settings. Call it on a Config that
// Validate accepted; log becomes Options.Logger.
func (c *Config) Options(log zerolog.Logger) proxy.Options {
	send := c.Upstream.ProxyProtocol
	if send == "off" {
		send = ""
	}
	return proxy.Options{
		Upstream:           c.Upstream.Address,
		DialTimeout:        c.Upstream.DialTimeout,
		HandshakeTimeout:   c.Limits.HandshakeTimeout,
		Heartbeat:          c.Limits.Heartbeat,
		UpstreamHeartbeat:  c.Limits.UpstreamHeartbeat,
		FrameMax:           c.Limits.FrameMax,
		ChannelMax:         c.Limits.ChannelMax,
		MaxUnconfirmed:     int(c.Limits.MaxUnconfirmed),
		ProxyProtocol:      proxy.ProxyProtocolMode(c.ProxyProtocol.Mode),
		TrustedProxies:     append([]netip.Prefix(nil), c.ProxyProtocol.Trusted...),
		ProxyHeaderTimeout: c.ProxyProtocol.HeaderTimeout,
		SendProxyProtocol:  send,
		ShutdownGrace:      c.ShutdownGrace,
		Logger:             log,
	}
}

// ByteSize is a size in bytes, written in the file as a whole number of
// bytes or with a unit: KiB, MiB, GiB (powers of 1024) or KB, MB, GB (powers
// of 1000), e.g. 16MiB.
type ByteSize int64

var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9},
	{"B", 1},
}

// ParseByteSize reads a ByteSize; see ByteSize for the forms.
func ParseByteSize(s string) (ByteSize, error) {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range byteUnits {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size (bytes, or a whole number with KiB, MiB, GiB, KB, MB, GB)", s)
	}
	return ByteSize(n * mult), nil
}

// String writes b with the largest binary unit that divides it.
func (b ByteSize) String() string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b != 0 && int64(b)%u.mult == 0 {
			return strconv.FormatInt(int64(b)/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(b), 10)
}
