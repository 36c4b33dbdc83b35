package config

import (
	"net"
	"strconv"
	"strings"
	"time"
)

// AMQP 0-9-1 limits the settings must respect.
const (
	minFrameMax  = 4096                // frame-min-size in the spec
	maxHeartbeat = 65535 * time.Second // the tune field is a short, in seconds
)

// Validate checks every value and the relations between them. It returns nil
// or an Errors naming, for each problem, the key and where its value came
// from (file line or flag), in file order. The file's decoding problems, if
// any, are part of the list.
func (c *Config) Validate() error {
	v := validator{c: c, errs: append(Errors(nil), c.decodeErrs...)}

	v.hostPort("listen.address", c.Listen.Address, false)

	v.hostPort("upstream.address", c.Upstream.Address, true)
	v.positive("upstream.dial_timeout", c.Upstream.DialTimeout)
	v.oneOf("upstream.proxy_protocol", c.Upstream.ProxyProtocol, "off", "v1", "v2")

	v.oneOf("proxy_protocol.mode", c.ProxyProtocol.Mode, "off", "optional", "required")
	if c.ProxyProtocol.Mode != "off" && len(c.ProxyProtocol.Trusted) == 0 &&
		v.ok("proxy_protocol.mode") && v.ok("proxy_protocol.trusted") {
		v.fail("proxy_protocol.mode", "%q with no proxy_protocol.trusted addresses trusts nobody, so %s; "+
			"list the load balancers' addresses or set mode: off", c.ProxyProtocol.Mode,
			map[string]string{
				"optional": "every header would be refused",
				"required": "every connection would be refused",
			}[c.ProxyProtocol.Mode])
	}
	v.positive("proxy_protocol.header_timeout", c.ProxyProtocol.HeaderTimeout)

	v.positive("limits.handshake_timeout", c.Limits.HandshakeTimeout)
	if c.ProxyProtocol.Mode != "off" && c.ProxyProtocol.HeaderTimeout > c.Limits.HandshakeTimeout &&
		v.ok("proxy_protocol.header_timeout") && v.ok("limits.handshake_timeout") {
		key := v.setOne("proxy_protocol.header_timeout", "limits.handshake_timeout")
		v.fail(key, "proxy_protocol.header_timeout %v is longer than limits.handshake_timeout %v, which includes the PROXY header",
			c.ProxyProtocol.HeaderTimeout, c.Limits.HandshakeTimeout)
	}
	v.heartbeat("limits.heartbeat", c.Limits.Heartbeat)
	v.heartbeat("limits.upstream_heartbeat", c.Limits.UpstreamHeartbeat)
	if c.Limits.FrameMax < minFrameMax {
		v.fail("limits.frame_max", "%d is below AMQP's minimum frame size %d", c.Limits.FrameMax, minFrameMax)
	}
	if c.Limits.MaxUnconfirmed <= 0 {
		v.fail("limits.max_unconfirmed", "%s must be more than 0", c.Limits.MaxUnconfirmed)
	}

	v.positive("shutdown_grace", c.ShutdownGrace)

	v.oneOf("log.level", c.Log.Level, "trace", "debug", "info", "warn", "error")
	v.oneOf("log.format", c.Log.Format, "json", "console", "auto")

	v.validateGroup()
	v.validateAdmin()
	v.validateTLS()

	return v.errs.orNil()
}

type validator struct {
	c    *Config
	errs Errors
	bad  map[string]bool
}

func (v *validator) fail(key, format string, args ...any) {
	o, set := v.c.where[key]
	if !set {
		o.file = v.c.File // a default: name the file, there is no line
	}
	v.errs = append(v.errs, o.errorAt(key, format, args...))
	if v.bad == nil {
		v.bad = map[string]bool{}
	}
	v.bad[key] = true
}

// setOne returns the first of keys that a file or flag set (the last key if
// none was), to attach a problem between keys to a line the user wrote.
func (v *validator) setOne(keys ...string) string {
	for _, k := range keys {
		if _, set := v.c.where[k]; set {
			return k
		}
	}
	return keys[len(keys)-1]
}

// ok reports whether key has passed its own checks, so relations between
// keys are only checked on sound values.
func (v *validator) ok(key string) bool { return !v.bad[key] && !v.c.failed[key] }

func (v *validator) oneOf(key, val string, allowed ...string) {
	for _, a := range allowed {
		if val == a {
			return
		}
	}
	v.fail(key, "%q is not one of %s", val, strings.Join(allowed, ", "))
}

func (v *validator) positive(key string, d time.Duration) {
	if d <= 0 {
		v.fail(key, "%v must be more than 0", d)
	}
}

func (v *validator) heartbeat(key string, d time.Duration) {
	switch {
	case d < time.Second:
		v.fail(key, "%v is less than 1s (AMQP heartbeats are whole seconds; the proxy needs them on)", d)
	case d%time.Second != 0:
		v.fail(key, "%v is not a whole number of seconds, as AMQP heartbeats are", d)
	case d > maxHeartbeat:
		v.fail(key, "%v is more than AMQP's largest heartbeat, %v", d, maxHeartbeat)
	}
}

// hostPort checks a host:port address. For a dial target (dial) the host
// must be there and the port non-zero; a listen address may be ":port" (every
// interface) or port 0 (any free port).
func (v *validator) hostPort(key, addr string, dial bool) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		v.fail(key, "%q is not host:port (e.g. 127.0.0.1:5672, [::1]:5672, :5672)", addr)
		return
	}
	n, err := strconv.ParseUint(port, 10, 16)
	switch {
	case err != nil:
		v.fail(key, "%q: port %q is not a number from 0 to 65535", addr, port)
	case dial && host == "":
		v.fail(key, "%q has no host", addr)
	case dial && n == 0:
		v.fail(key, "%q: port 0 cannot be connected to", addr)
	}
}
