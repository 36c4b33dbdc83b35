package main

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mirrorproxy/mirrorproxy/testenv/testcerts"
)

// tlsNode is a sidecar binary with an amqps listener, and its log.
type tlsNode struct {
	t       *testing.T
	cmd     *exec.Cmd
	exited  <-chan error
	tlsAddr string

	mu    sync.Mutex
	lines []logLine
	done  chan struct{} // closed when stderr ended
}

// startTLSNode runs `mirrorproxy run` with args, reads its JSON log in
// the background until it exits, and waits for its amqps listener.
func startTLSNode(t *testing.T, tlsAddr string, args ...string) *tlsNode {
	t.Helper()
	n := launchNode(t, tlsAddr, args...)
	n.waitLog("the amqps listener", func(l logLine) bool { return l.msg() == "accepting AMQP clients" && l["tls"] == true })
	return n
}

// launchNode is startTLSNode without the wait.
func launchNode(t *testing.T, tlsAddr string, args ...string) *tlsNode {
	t.Helper()
	cmd, lines, exited := startBinary(t, append([]string{"run", "--log-format", "json"}, args...)...)
	n := &tlsNode{t: t, cmd: cmd, exited: exited, tlsAddr: tlsAddr, done: make(chan struct{})}
	go func() {
		defer close(n.done)
		for text := range lines {
			var l logLine
			if err := json.Unmarshal([]byte(text), &l); err != nil {
				l = logLine{"message": "NOT JSON: " + text}
			}
			n.mu.Lock()
			n.lines = append(n.lines, l)
			n.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		if t.Failed() {
			n.mu.Lock()
			for _, l := range n.lines {
				b, _ := json.Marshal(l)
				t.Logf("sidecar: %s", b)
			}
			n.mu.Unlock()
		}
	})
	return n
}

// logs returns the lines that match.
func (n *tlsNode) logs(match func(logLine) bool) []logLine {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []logLine
	for _, l := range n.lines {
		if match(l) {
			out = append(out, l)
		}
	}
	return out
}

// waitLog waits until a line matches, and returns the first that does.
func (n *tlsNode) waitLog(what string, match func(logLine) bool) logLine {
	n.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if ls := n.logs(match); len(ls) > 0 {
			return ls[0]
		}
		select {
		case <-n.done:
			n.t.Fatalf("the sidecar exited before logging %s", what)
		default:
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("no log line for %s within 30s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM and expects exit 0.
func (n *tlsNode) stop() {
	n.t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		n.t.Fatal(err)
	}
	select {
	case <-n.done:
	case <-time.After(20 * time.Second):
		n.t.Fatal("the sidecar did not end its log within 20s of SIGTERM")
	}
	if err := <-n.exited; err != nil {
		n.t.Errorf("exit after SIGTERM: %v", err)
	}
}

func refusal(part string) func(logLine) bool {
	return func(l logLine) bool {
		return strings.HasPrefix(l.msg(), "refused a TLS client: ") && strings.Contains(l.msg(), part)
	}
}

// clientTLS is a client's tls.Config trusting ca, showing cert (if any).
func clientTLS(ca *testcerts.CA, cert *tls.Certificate) *tls.Config {
	c := &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}
	if cert != nil {
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return c
}

// servedSerial dials the amqps listener with amqp091-go and returns the
// serial of the certificate the sidecar served.
func servedSerial(t *testing.T, addr string, cfg *tls.Config) (string, error) {
	t.Helper()
	c, err := amqp.DialTLS("amqps://guest:guest@"+addr+"/", cfg)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}

// tlsSession is an open amqp091-go session over TLS with a consumer on
// its own queue.
type tlsSession struct {
	conn   *amqp.Connection
	ch     *amqp.Channel
	queue  string
	deliv  <-chan amqp.Delivery
	serial string
	n      int
}

func openTLSSession(t *testing.T, addr string, cfg *tls.Config, queue string) *tlsSession {
	t.Helper()
	conn, err := amqp.DialTLS("amqps://guest:guest@"+addr+"/", cfg)
	if err != nil {
		t.Fatalf("DialTLS: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	deliv, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &tlsSession{conn: conn, ch: ch, queue: queue, deliv: deliv,
		serial: conn.ConnectionState().PeerCertificates[0].SerialNumber.String()}
}

// roundTrip publishes one confirmed message and consumes it.
func (s *tlsSession) roundTrip(t *testing.T, when string) {
	t.Helper()
	s.n++
	body := fmt.Sprintf("%s #%d", when, s.n)
	dc, err := s.ch.PublishWithDeferredConfirm("", s.queue, false, false, amqp.Publishing{Body: []byte(body)})
	if err != nil {
		t.Fatalf("%s: publish: %v", when, err)
	}
	if ok, err := dc.WaitContext(t.Context()); err != nil || !ok {
		t.Fatalf("%s: confirm: %v %v", when, ok, err)
	}
	select {
	case d, ok := <-s.deliv:
		if !ok || string(d.Body) != body {
			t.Fatalf("%s: delivery %q (open %v), want %q", when, d.Body, ok, body)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no delivery within 10s", when)
	}
}

// TestExecTLS runs a sidecar with an amqps listener (flags --tls-listen,
// --tls-cert, --tls-key; the client CA and reload interval from the file)
// in front of a real broker: amqp091-go and pika publish and consume over
// TLS; a certificate replaced on disk is served to new connections while
// an open session carries on; bad clients get one log line each and lose
// only their own connection.
func TestExecTLS(t *testing.T) {
	broker := soloBroker(t)
	dir := t.TempDir()
	ca, other := testcerts.NewCA(t, "mirrorproxy test ca"), testcerts.NewCA(t, "another ca")
	first := ca.Leaf(t, testcerts.LeafOptions{})
	files := testcerts.Write(t, dir, "sidecar", first, ca)
	clientLeaf := ca.Leaf(t, testcerts.LeafOptions{Name: "client"})
	client := clientLeaf.TLS(t)
	clientFiles := testcerts.Write(t, dir, "client", clientLeaf, ca)
	expired := ca.Leaf(t, testcerts.LeafOptions{Name: "client", Expired: true}).TLS(t)
	stranger := other.Leaf(t, testcerts.LeafOptions{Name: "client"}).TLS(t)

	plainAddr, tlsAddr := freeAddr(t), freeAddr(t)
	cfgFile := writeFile(t, "tls.yaml", fmt.Sprintf(`listen:
  address: %s
upstream:
  address: %s
tls:
  ca: %s
  client_auth: require
  reload_interval: 100ms
shutdown_grace: 3s
`, plainAddr, broker, files.CA))
	n := startTLSNode(t, tlsAddr, "--config", cfgFile, "--tls-listen", tlsAddr, "--tls-cert", files.Cert, "--tls-key", files.Key)

	old := openTLSSession(t, tlsAddr, clientTLS(ca, &client), "tls.old")
	if old.serial != first.Serial().String() {
		t.Fatalf("served serial %s, want the first certificate's %s", old.serial, first.Serial())
	}
	old.roundTrip(t, "before the replacement")

	t.Run("pika", func(t *testing.T) {
		script := `
import pika, ssl, sys
addr, ca, cert, key = sys.argv[1:5]
host, port = addr.rsplit(":", 1)
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
params = pika.ConnectionParameters(host=host, port=int(port), credentials=pika.PlainCredentials("guest", "guest"),
                                   ssl_options=pika.SSLOptions(ctx, server_hostname="localhost"))
conn = pika.BlockingConnection(params)
ch = conn.channel()
ch.confirm_delivery()
q = ch.queue_declare(queue="", exclusive=True).method.queue
ch.basic_publish(exchange="", routing_key=q, body=b"hello over TLS from pika")
for method, props, body in ch.consume(q, auto_ack=True, inactivity_timeout=10):
    print(body.decode() if body else "nothing")
    break
conn.close()
`
		out, err := exec.Command("/usr/bin/python3", "-c", script, tlsAddr, files.CA, clientFiles.Cert, clientFiles.Key).CombinedOutput()
		if err != nil {
			t.Fatalf("pika over TLS: %v\n%s", err, out)
		}
		if got := strings.TrimSpace(string(out)); got != "hello over TLS from pika" {
			t.Fatalf("pika consumed %q", got)
		}
	})

	t.Run("replace the certificate", func(t *testing.T) {
		second := ca.Leaf(t, testcerts.LeafOptions{})
		testcerts.WriteFile(t, files.Key, second.KeyPEM)
		testcerts.WriteFile(t, files.Cert, second.CertPEM)
		deadline := time.Now().Add(15 * time.Second)
		for {
			got, err := servedSerial(t, tlsAddr, clientTLS(ca, &client))
			if err == nil && got == second.Serial().String() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("new connections still get serial %s (%v), want the new certificate's %s", got, err, second.Serial())
			}
			time.Sleep(50 * time.Millisecond)
		}
		n.waitLog("the reload", func(l logLine) bool {
			return l.msg() == "certificates reloaded" && l["serial"] == second.Serial().String()
		})
		// The session opened with the first certificate carries on.
		old.roundTrip(t, "after the replacement")
		if old.conn.IsClosed() {
			t.Fatal("the old session was closed by the reload")
		}

		// A bad new certificate (expired) is refused: the second stays.
		bad := ca.Leaf(t, testcerts.LeafOptions{Expired: true})
		testcerts.WriteFile(t, files.Key, bad.KeyPEM)
		testcerts.WriteFile(t, files.Cert, bad.CertPEM)
		n.waitLog("the refused reload", func(l logLine) bool {
			e, _ := l["error"].(string)
			return l.msg() == "new TLS certificates refused; the ones loaded before stay in use" && strings.Contains(e, "expired on")
		})
		if got, err := servedSerial(t, tlsAddr, clientTLS(ca, &client)); err != nil || got != second.Serial().String() {
			t.Fatalf("after a refused reload: serial %s (%v), want %s still", got, err, second.Serial())
		}
		old.roundTrip(t, "after the refused reload")
	})

	t.Run("bad clients", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			cfg  *tls.Config
			want string
		}{
			{"certificate of another CA", clientTLS(ca, &stranger), "not signed by a CA in tls.ca"},
			{"expired certificate", clientTLS(ca, &expired), "has expired or is not valid yet"},
			{"no certificate", clientTLS(ca, nil), "sent no certificate"},
		} {
			before := len(n.logs(refusal("")))
			if _, err := amqp.DialTLS("amqps://guest:guest@"+tlsAddr+"/", tc.cfg); err == nil {
				t.Errorf("%s: the connection opened", tc.name)
			}
			n.waitLog(tc.name, refusal(tc.want))
			if got := len(n.logs(refusal(""))); got != before+1 {
				t.Errorf("%s: %d refusal lines, want exactly 1", tc.name, got-before)
			}
		}
		// Plain AMQP on the TLS port: the client sees no AMQP answer.
		if c, err := amqp.Dial("amqp://guest:guest@" + tlsAddr + "/"); err == nil {
			c.Close()
			t.Error("plain AMQP on the amqps port opened a connection")
		}
		n.waitLog("plain AMQP", refusal("plain AMQP sent to the TLS port"))
		old.roundTrip(t, "beside the bad clients")
		// The plain listener still serves too.
		c, err := amqp.Dial("amqp://guest:guest@" + plainAddr + "/")
		if err != nil {
			t.Fatalf("plain listener: %v", err)
		}
		c.Close()
	})

	old.conn.Close()
	n.stop()
}

// TestExecTLSSIGHUP: with polling off (tls.reload_interval 0s), SIGHUP
// reloads the certificate; a SIGHUP with a bad pair on disk keeps the old
// one; and SIGHUP without any TLS does not stop a sidecar.
func TestExecTLSSIGHUP(t *testing.T) {
	broker := soloBroker(t)
	dir := t.TempDir()
	ca := testcerts.NewCA(t, "mirrorproxy test ca")
	first := ca.Leaf(t, testcerts.LeafOptions{})
	files := testcerts.Write(t, dir, "sidecar", first, ca)
	tlsAddr := freeAddr(t)
	cfgFile := writeFile(t, "tls.yaml", fmt.Sprintf(`listen:
  address: %s
upstream:
  address: %s
tls:
  listen: %s
  cert: %s
  key: %s
  reload_interval: 0s
shutdown_grace: 3s
`, freeAddr(t), broker, tlsAddr, files.Cert, files.Key))
	n := startTLSNode(t, tlsAddr, "--config", cfgFile)
	trust := clientTLS(ca, nil)
	old := openTLSSession(t, tlsAddr, trust, "tls.hup")

	second := ca.Leaf(t, testcerts.LeafOptions{})
	testcerts.WriteFile(t, files.Key, second.KeyPEM)
	testcerts.WriteFile(t, files.Cert, second.CertPEM)
	// Polling is off: nothing changes until the signal.
	if got, err := servedSerial(t, tlsAddr, trust); err != nil || got != first.Serial().String() {
		t.Fatalf("before SIGHUP: serial %s (%v), want the first %s", got, err, first.Serial())
	}
	if err := n.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	n.waitLog("the reload", func(l logLine) bool {
		return l.msg() == "certificates reloaded" && l["serial"] == second.Serial().String()
	})
	if got, err := servedSerial(t, tlsAddr, trust); err != nil || got != second.Serial().String() {
		t.Fatalf("after SIGHUP: serial %s (%v), want %s", got, err, second.Serial())
	}

	// A key that does not match: refused on SIGHUP, the second stays.
	testcerts.WriteFile(t, files.Key, ca.Leaf(t, testcerts.LeafOptions{}).KeyPEM)
	if err := n.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	n.waitLog("the refusal", func(l logLine) bool {
		e, _ := l["error"].(string)
		return l.msg() == "new TLS certificates refused; the ones loaded before stay in use" && l["trigger"] == "SIGHUP" &&
			strings.Contains(e, "does not go with the certificate")
	})
	if got, err := servedSerial(t, tlsAddr, trust); err != nil || got != second.Serial().String() {
		t.Fatalf("after a refused SIGHUP: serial %s (%v), want %s", got, err, second.Serial())
	}
	old.roundTrip(t, "after two SIGHUPs")
	old.conn.Close()
	n.stop()

	// No TLS at all: SIGHUP is logged, not fatal.
	plain := freeAddr(t)
	cmd, lines, exited := startBinary(t, "run", "--listen", plain, "--upstream", broker, "--log-format", "json")
	var msgs []string
	for !strings.Contains(strings.Join(msgs, "|"), "accepting AMQP clients") {
		msgs = append(msgs, nextMsg(t, lines))
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(strings.Join(msgs, "|"), "no TLS certificates configured: nothing to reload") {
		msgs = append(msgs, nextMsg(t, lines))
	}
	c, err := net.DialTimeout("tcp", plain, 5*time.Second)
	if err != nil {
		t.Fatalf("after SIGHUP the sidecar no longer listens: %v", err)
	}
	c.Close()
	stopBinary(t, cmd, lines, exited, msgs, 10*time.Second)
}

// nextMsg is the message of the next JSON log line.
func nextMsg(t *testing.T, lines <-chan string) string {
	t.Helper()
	select {
	case text, ok := <-lines:
		if !ok {
			t.Fatal("the sidecar exited")
		}
		var l logLine
		if err := json.Unmarshal([]byte(text), &l); err != nil {
			t.Fatalf("not JSON: %q", text)
		}
		return l.msg()
	case <-time.After(20 * time.Second):
		t.Fatal("no log line within 20s")
	}
	return ""
}
