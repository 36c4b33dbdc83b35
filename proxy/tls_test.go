package proxy_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/proxy"
	"github.com/mirrorproxy/mirrorproxy/testenv"
	"github.com/mirrorproxy/mirrorproxy/testenv/testcerts"
)

// startTLSProxy serves opts on an amqps listener with cfg until the test
// ends.
func startTLSProxy(t *testing.T, opts proxy.Options, cfg *tls.Config) *testProxy {
	t.Helper()
	logs := &logBuffer{}
	opts.Logger = zerolog.New(logs).Level(zerolog.DebugLevel)
	srv, err := proxy.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, cfg) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, proxy.ErrServerClosed) {
			t.Errorf("ServeTLS returned %v, want ErrServerClosed", err)
		}
		if t.Failed() {
			t.Logf("proxy log:\n%s", logs.String())
		}
	})
	return &testProxy{Server: srv, Addr: ln.Addr().String(), Logs: logs}
}

// tlsFixture is a CA, the sidecar's certificate, and client certificates:
// good, expired, and one of another CA.
type tlsFixture struct {
	ca, otherCA                       *testcerts.CA
	server, client, expired, stranger tls.Certificate
}

func newTLSFixture(t *testing.T) *tlsFixture {
	ca, other := testcerts.NewCA(t, "test ca"), testcerts.NewCA(t, "other ca")
	return &tlsFixture{
		ca: ca, otherCA: other,
		server:   ca.Leaf(t, testcerts.LeafOptions{}).TLS(t),
		client:   ca.Leaf(t, testcerts.LeafOptions{Name: "client"}).TLS(t),
		expired:  ca.Leaf(t, testcerts.LeafOptions{Name: "client", Expired: true}).TLS(t),
		stranger: other.Leaf(t, testcerts.LeafOptions{Name: "client"}).TLS(t),
	}
}

func (f *tlsFixture) serverConfig(auth tls.ClientAuthType) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{f.server}, ClientAuth: auth, ClientCAs: f.ca.Pool()}
}

func (f *tlsFixture) clientConfig(cert *tls.Certificate) *tls.Config {
	c := &tls.Config{RootCAs: f.ca.Pool(), ServerName: "localhost"}
	if cert != nil {
		// Sent whatever CAs the server names (Go's client would keep back a
		// certificate of a CA the server does not list; others send it).
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return c
}

// tlsAttempt dials addr (after a PROXY header when header is not empty),
// runs a TLS handshake with cfg and sends AMQP's protocol header; it
// returns the error the client saw, nil when the server answered.
func tlsAttempt(t *testing.T, addr, header string, cfg *tls.Config) error {
	t.Helper()
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	if header != "" {
		if _, err := raw.Write([]byte(header)); err != nil {
			t.Fatal(err)
		}
	}
	c := tls.Client(raw, cfg)
	if err := c.Handshake(); err != nil {
		return err
	}
	// Under TLS 1.3 the server judges the client's certificate after the
	// client's handshake returned: the refusal arrives on the first read.
	if _, err := c.Write([]byte("AMQP\x00\x00\x09\x01")); err != nil {
		return err
	}
	_, err = c.Read(make([]byte, 1))
	return err
}

// TestTLSHandshakeRefusals: every kind of bad TLS client gets one log line
// naming its fault and loses only its own connection. No broker is needed:
// a refused client never reaches one.
func TestTLSHandshakeRefusals(t *testing.T) {
	f := newTLSFixture(t)
	p := startTLSProxy(t, proxy.Options{
		Upstream:      "127.0.0.1:1",
		ProxyProtocol: proxy.ProxyProtocolOptional, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	}, f.serverConfig(tls.RequireAndVerifyClientCert))

	refusals := func() []string {
		var out []string
		for _, l := range strings.Split(p.Logs.String(), "\n") {
			if strings.Contains(l, "refused a TLS client") {
				out = append(out, l)
			}
		}
		return out
	}
	for i, tc := range []struct {
		name   string
		header string
		cfg    *tls.Config
		want   string
	}{
		{"another CA's certificate", "", f.clientConfig(&f.stranger), "not signed by a CA in tls.ca"},
		{"expired certificate", "", f.clientConfig(&f.expired), "has expired or is not valid yet"},
		{"no certificate", "", f.clientConfig(nil), "sent no certificate"},
		{"client distrusts the server", "", &tls.Config{RootCAs: f.otherCA.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{f.client}}, "the client aborted the handshake"},
		{"behind a load balancer", "PROXY TCP4 203.0.113.7 127.0.0.1 5555 5671\r\n", f.clientConfig(&f.stranger), "not signed by a CA in tls.ca"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tlsAttempt(t, p.Addr, tc.header, tc.cfg); err == nil {
				t.Fatal("the handshake succeeded")
			}
			var got []string
			eventually(t, 5*time.Second, "a refusal in the log", func() bool { got = refusals(); return len(got) > i })
			if len(got) != i+1 || !strings.Contains(got[i], tc.want) {
				t.Fatalf("refusal lines %q, want line %d to say %q", got, i+1, tc.want)
			}
			if tc.header != "" && !strings.Contains(got[i], `"client":"203.0.113.7:5555"`) {
				t.Errorf("the refusal does not name the client the PROXY header gave: %s", got[i])
			}
			if tc.name == "expired certificate" && !strings.Contains(got[i], `"cert_not_after"`) {
				t.Errorf("the refusal does not show the certificate's end: %s", got[i])
			}
		})
	}

	t.Run("plain AMQP", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = c.Write([]byte("AMQP\x00\x00\x09\x01"))
		answer, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("reading the answer: %v (want the alert, then the end)", err)
		}
		// A TLS record: alert (21), TLS 1.2, length 2, fatal (2), unexpected_message (10).
		if want := []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a}; !bytes.Equal(answer, want) {
			t.Errorf("answer % x, want the TLS alert % x", answer, want)
		}
		eventually(t, 5*time.Second, "the plain-AMQP refusal in the log", func() bool {
			return p.Logs.lineWith("refused a TLS client: plain AMQP sent to the TLS port") != ""
		})
	})

	t.Run("probe", func(t *testing.T) {
		// A bare connect, as a load balancer's health check does: no warning.
		before := len(refusals())
		c, err := net.Dial("tcp", p.Addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		eventually(t, 5*time.Second, "the probe's debug line", func() bool {
			return p.Logs.lineWith(`"level":"debug"`, "the client left during the TLS handshake") != ""
		})
		for _, l := range refusals()[before:] {
			if strings.Contains(l, `"level":"warn"`) {
				t.Errorf("a bare connect was logged as a warning: %s", l)
			}
		}
	})
}

// TestTLSSession: amqp091-go's DialTLS runs a session through the amqps
// listener to the broker, with and without a client certificate
// (verify-if-given), while bad clients are refused beside it.
func TestTLSSession(t *testing.T) {
	needBroker(t)
	f := newTLSFixture(t)
	p := startTLSProxy(t, proxy.Options{Upstream: broker.AMQPAddr}, f.serverConfig(tls.VerifyClientCertIfGiven))
	url := "amqps://guest:guest@" + p.Addr + "/"

	withCert, err := amqp091.DialTLS(url, f.clientConfig(&f.client))
	if err != nil {
		t.Fatalf("DialTLS with a client certificate: %v", err)
	}
	defer withCert.Close()
	if st := withCert.ConnectionState(); len(st.PeerCertificates) == 0 || st.PeerCertificates[0].Subject.CommonName != "localhost" {
		t.Fatalf("the session is not TLS with the sidecar's certificate: %+v", st.PeerCertificates)
	}
	healthy(t, withCert)
	if p.Logs.lineWith(`"client_cert":"CN=client`) == "" {
		t.Errorf("the session's log does not name the client certificate:\n%s", p.Logs.String())
	}

	without, err := amqp091.DialTLS(url, f.clientConfig(nil))
	if err != nil {
		t.Fatalf("DialTLS without a client certificate (verify-if-given): %v", err)
	}
	defer without.Close()

	// Bad clients beside them: a stranger's certificate, plain AMQP.
	if err := tlsAttempt(t, p.Addr, "", f.clientConfig(&f.stranger)); err == nil {
		t.Fatal("a certificate of another CA was accepted")
	}
	if _, err := amqp091.Dial("amqp://guest:guest@" + p.Addr + "/"); err == nil {
		t.Fatal("plain AMQP on the TLS port opened a connection")
	}
	healthy(t, withCert)
	healthy(t, without)
	if n := p.Sessions(); n != 2 {
		t.Errorf("%d sessions open, want the 2 good ones", n)
	}
}

// TestTLSToBroker: the legs to the broker are TLS when UpstreamTLS is set
// (a broker with an amqps listener and a certificate of the test CA); a
// broker whose certificate the sidecar does not trust refuses the client
// with 320 naming the TLS failure.
func TestTLSToBroker(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a broker")
	}
	f := newTLSFixture(t)
	// The broker runs as user rabbitmq when the tests run as root: its
	// files must be readable by others (t.TempDir is 0700).
	dir, err := os.MkdirTemp("", "mirrorproxy-tls-broker-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	files := testcerts.Write(t, dir, "broker", f.ca.Leaf(t, testcerts.LeafOptions{}), f.ca)
	for p, mode := range map[string]os.FileMode{dir: 0o755, files.Cert: 0o644, files.Key: 0o644, files.CA: 0o644} {
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	addrs, err := testenv.ReserveAddrs(1)
	if err != nil {
		t.Fatal(err)
	}
	b := testenv.Start(t, testenv.Options{Nodes: 1, Config: fmt.Sprintf(`listeners.ssl.default = %s
ssl_options.cacertfile = %s
ssl_options.certfile = %s
ssl_options.keyfile = %s
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
`, addrs[0], files.CA, files.Cert, files.Key)}).Nodes[0]
	_ = b

	p := startProxy(t, proxy.Options{Upstream: addrs[0], UpstreamTLS: &tls.Config{RootCAs: f.ca.Pool(), ServerName: "localhost"}})
	c := p.dial(t)
	healthy(t, c)

	distrust := startProxy(t, proxy.Options{Upstream: addrs[0], UpstreamTLS: &tls.Config{RootCAs: x509.NewCertPool(), ServerName: "localhost"}})
	_, err = amqp091.Dial(distrust.URL())
	var ae *amqp091.Error
	if !errors.As(err, &ae) || ae.Code != 320 || !strings.Contains(ae.Reason, "TLS handshake with the broker") {
		t.Fatalf("dial through a sidecar that distrusts the broker: %v, want 320 naming the TLS handshake", err)
	}
}

// TestTLSClientAddressReachesTheBroker: behind a load balancer that sends
// a PROXY header before the client's TLS, the PROXY header the sidecar
// writes to the broker names that client, as on the plain listener. The
// "broker" here only records the header.
func TestTLSClientAddressReachesTheBroker(t *testing.T) {
	f := newTLSFixture(t)
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	header := make(chan string, 1)
	go func() {
		c, err := up.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		header <- line
	}()
	p := startTLSProxy(t, proxy.Options{
		Upstream: up.Addr().String(), SendProxyProtocol: "v1",
		ProxyProtocol: proxy.ProxyProtocolRequired, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	}, f.serverConfig(tls.NoClientCert))
	_ = tlsAttempt(t, p.Addr, "PROXY TCP4 203.0.113.7 127.0.0.1 5555 5671\r\n", f.clientConfig(nil)) // ends when the "broker" hangs up
	select {
	case got := <-header:
		if !strings.HasPrefix(got, "PROXY TCP4 203.0.113.7 ") || !strings.Contains(got, " 5555 ") {
			t.Fatalf("PROXY header to the broker %q, want the TLS client's address 203.0.113.7:5555", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the sidecar did not connect to the broker")
	}
}
