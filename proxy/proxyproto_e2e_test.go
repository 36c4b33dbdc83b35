package proxy_test

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/mirrorproxy/mirrorproxy/proxy"
	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
	"github.com/mirrorproxy/mirrorproxy/testenv"
)

var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

// sendProxyHeader writes a PROXY header claiming the client is at src.
func sendProxyHeader(t *testing.T, c *rawClient, version byte, src string) {
	t.Helper()
	h := &proxyproto.Header{
		Version:           version,
		Command:           proxyproto.PROXY,
		TransportProtocol: proxyproto.TCPv4,
		SourceAddr:        net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)),
		DestinationAddr:   c.conn.RemoteAddr(),
	}
	if _, err := h.WriteTo(c.conn); err != nil {
		t.Fatal(err)
	}
}

// A load balancer's header (v1 and v2) from a trusted peer makes the real
// client's address the session's, in the logs; and with
// SendProxyProtocol the broker sees that address too.
func TestProxyProtocolEndToEnd(t *testing.T) {
	needBroker(t)
	node := testenv.Start(t, testenv.Options{Nodes: 1, Config: "proxy_protocol = true"}).Nodes[0]
	for _, tc := range []struct {
		in   byte
		out  string
		addr string
	}{{1, "v2", "203.0.113.7:4242"}, {2, "v1", "198.51.100.9:5151"}} {
		p := startProxy(t, proxy.Options{
			Upstream:          node.AMQPAddr,
			ProxyProtocol:     proxy.ProxyProtocolRequired,
			TrustedProxies:    loopback,
			SendProxyProtocol: tc.out,
		})
		c := dialRaw(t, p.Addr)
		sendProxyHeader(t, c, tc.in, tc.addr)
		c.open(0, nil)
		eventually(t, 10*time.Second, "the broker lists the client's real address", func() bool {
			out, err := node.Ctl(t.Context(), "list_connections", "peer_host", "peer_port")
			return err == nil && strings.Contains(out, strings.Replace(tc.addr, ":", "\t", 1))
		})
		if p.Logs.lineWith(`"client":"`+tc.addr+`"`) == "" {
			t.Errorf("no log line carries the client address %s:\n%s", tc.addr, p.Logs.String())
		}
	}
}

// A truncated or forged header closes only that connection, with a log line.
func TestBadProxyHeaderClosesOnlyThatConnection(t *testing.T) {
	p := startProxy(t, proxy.Options{ProxyProtocol: proxy.ProxyProtocolOptional, TrustedProxies: loopback, ProxyHeaderTimeout: time.Second})
	bystander := p.dial(t) // optional: no header is fine
	for _, bad := range []string{
		"PROXY TCP4 203.0.113.7\r\n",                                 // truncated
		"PROXY TCP9 203.0.113.7 127.0.0.1 4242 5672\r\n",             // unknown protocol
		"PROXY TCP4 999.0.113.7 127.0.0.1 4242 5672\r\n",             // bad address
		"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\xff\x01\x02\x03\x04junk", // v2, length beyond what is sent
	} {
		c := dialRaw(t, p.Addr)
		c.send([]byte(bad))
		c.send(amqp.ProtocolHeader[:])
		if _, _, err := c.next(); err == nil {
			t.Fatalf("header %q: the connection was served", bad)
		}
		healthy(t, bystander)
	}
	// The v2 header announcing more octets than arrive is refused when the
	// header timeout passes; the others at once.
	eventually(t, 5*time.Second, "log lines for the bad headers", func() bool {
		return strings.Count(p.Logs.String(), "bad PROXY protocol header") == 3 &&
			strings.Count(p.Logs.String(), "handshake timeout") == 1
	})
}
