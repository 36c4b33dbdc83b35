package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/testenv/testcerts"
)

func TestLoadProblems(t *testing.T) {
	dir := t.TempDir()
	ca := testcerts.NewCA(t, "ca")
	good := testcerts.Write(t, dir, "good", ca.Leaf(t, testcerts.LeafOptions{}), ca)
	expired := testcerts.Write(t, dir, "expired", ca.Leaf(t, testcerts.LeafOptions{Expired: true}), ca)
	other := testcerts.Write(t, dir, "other", ca.Leaf(t, testcerts.LeafOptions{}), ca)
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not pem\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")

	for _, tc := range []struct {
		name  string
		files Files
		want  []string // substrings, one per problem, in order
	}{
		{"good", good2(good), nil},
		{"missing files", Files{Cert: missing, Key: missing, CA: missing},
			[]string{"cert: \"" + missing + "\" does not exist", "key: \"" + missing + "\" does not exist", "ca: \"" + missing + "\" does not exist"}},
		{"key of another cert", Files{Cert: good.Cert, Key: other.Key}, []string{"key: \"" + other.Key + "\" does not go with the certificate"}},
		{"expired", Files{Cert: expired.Cert, Key: expired.Key}, []string{"cert: \"" + expired.Cert + "\": certificate \"localhost\" expired on "}},
		{"garbage", Files{Cert: garbage, Key: good.Key, CA: garbage},
			[]string{"cert: \"" + garbage + "\": holds no PEM certificate", "ca: \"" + garbage + "\" holds no PEM certificate"}},
		{"key is not a key", Files{Cert: good.Cert, Key: good.Cert}, []string{"key: \"" + good.Cert + "\" holds no PEM private key"}},
		{"cert without key", Files{Cert: good.Cert}, []string{"key: is empty, but cert is set"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Load(tc.files, time.Now())
			if tc.want == nil {
				if err != nil || m.Cert == nil || m.Pool == nil {
					t.Fatalf("Load: %v, %+v", err, m)
				}
				return
			}
			var ps Problems
			if !errors.As(err, &ps) || len(ps) != len(tc.want) {
				t.Fatalf("Load: %v, want %d problems %q", err, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(ps[i].Error(), w) {
					t.Errorf("problem %d: %q, want it to contain %q", i, ps[i].Error(), w)
				}
			}
		})
	}
}

func good2(f testcerts.Files) Files { return Files{Cert: f.Cert, Key: f.Key, CA: f.CA} }

// served dials a TLS server using cfg and returns the serial of the
// certificate it served.
func served(t *testing.T, srvCfg, cliCfg *tls.Config) (string, error) {
	t.Helper()
	// Loopback TCP, not net.Pipe: a side that fails writes its alert
	// into the socket buffer instead of waiting for the other to read.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	errc := make(chan error, 1)
	go func() {
		s := tls.Server(b, srvCfg)
		_ = s.SetDeadline(time.Now().Add(5 * time.Second))
		errc <- s.Handshake()
		s.Close()
	}()
	c := tls.Client(a, cliCfg)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	err = c.Handshake()
	if err == nil {
		// Under TLS 1.3 the server judges the client's certificate after
		// the client's handshake returned: wait for the server's verdict.
		_, _ = c.Write([]byte{0})
	}
	serr := <-errc
	if err != nil {
		return "", err
	}
	if serr != nil {
		return "", serr
	}
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}

// TestStoreReload: a changed file is picked up by the poll, a bad new
// set is refused and logged while the old one keeps serving, and Reload
// (what SIGHUP calls) loads a fixed set at once.
func TestStoreReload(t *testing.T) {
	dir := t.TempDir()
	ca := testcerts.NewCA(t, "ca")
	first := ca.Leaf(t, testcerts.LeafOptions{})
	files := good2(testcerts.Write(t, dir, "srv", first, ca))
	logs := &syncWriter{}
	s, err := NewStore("tls", files, zerolog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	cli := &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}
	srv := s.ServerConfig(tls.NoClientCert)
	if got, err := served(t, srv, cli); err != nil || got != first.Serial().String() {
		t.Fatalf("first serial: %v %v, want %v", got, err, first.Serial())
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Watch(ctx, 10*time.Millisecond) }()
	defer func() { cancel(); <-done }()

	second := ca.Leaf(t, testcerts.LeafOptions{})
	testcerts.WriteFile(t, files.Key, second.KeyPEM)
	testcerts.WriteFile(t, files.Cert, second.CertPEM)
	waitFor(t, "the second certificate to be served", func() bool {
		got, err := served(t, srv, cli)
		return err == nil && got == second.Serial().String()
	})

	// An expired certificate is refused; the second one stays.
	expired := ca.Leaf(t, testcerts.LeafOptions{Expired: true})
	testcerts.WriteFile(t, files.Key, expired.KeyPEM)
	testcerts.WriteFile(t, files.Cert, expired.CertPEM)
	waitFor(t, "the refusal in the log", func() bool {
		return strings.Contains(logs.String(), "new TLS certificates refused") && strings.Contains(logs.String(), "expired on")
	})
	if got, err := served(t, srv, cli); err != nil || got != second.Serial().String() {
		t.Fatalf("after a refused reload: %v %v, want the second serial %v", got, err, second.Serial())
	}
	if err := s.Reload("SIGHUP"); err == nil {
		t.Fatal("Reload of an expired certificate succeeded")
	}

	third := ca.Leaf(t, testcerts.LeafOptions{})
	if err := os.WriteFile(files.Key, third.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(files.Cert, third.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload("SIGHUP"); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got, err := served(t, srv, cli); err != nil || got != third.Serial().String() {
		t.Fatalf("after Reload: %v %v, want %v", got, err, third.Serial())
	}
}

// TestPeerConfig: two stores of the same CA shake hands both ways; a
// certificate of another CA is refused by either side.
func TestPeerConfig(t *testing.T) {
	dir := t.TempDir()
	ca, otherCA := testcerts.NewCA(t, "group"), testcerts.NewCA(t, "intruder")
	a := mustStore(t, testcerts.Write(t, dir, "a", ca.Leaf(t, testcerts.LeafOptions{Name: "a"}), ca))
	b := mustStore(t, testcerts.Write(t, dir, "b", ca.Leaf(t, testcerts.LeafOptions{Name: "b"}), ca))
	// The intruder trusts the group's CA but holds a certificate of its own.
	intruderFiles := testcerts.Write(t, dir, "x", otherCA.Leaf(t, testcerts.LeafOptions{Name: "x"}), ca)
	x := mustStore(t, intruderFiles)

	if _, err := served(t, a.PeerConfig(), b.PeerConfig()); err != nil {
		t.Fatalf("a and b: %v", err)
	}
	if _, err := served(t, a.PeerConfig(), x.PeerConfig()); err == nil {
		t.Fatal("a accepted the intruder's client certificate")
	}
	if _, err := served(t, x.PeerConfig(), a.PeerConfig()); err == nil {
		t.Fatal("a accepted the intruder's server certificate")
	}
}

func TestUpstreamConfig(t *testing.T) {
	dir := t.TempDir()
	ca, otherCA := testcerts.NewCA(t, "broker ca"), testcerts.NewCA(t, "other")
	broker := ca.Leaf(t, testcerts.LeafOptions{Name: "broker.example"})
	srv := &tls.Config{Certificates: []tls.Certificate{broker.TLS(t)}}
	trust := mustStore(t, testcerts.Files{CA: testcerts.Write(t, dir, "ca", broker, ca).CA})
	if _, err := served(t, srv, UpstreamConfig(trust, "broker.example")); err != nil {
		t.Fatalf("trusted broker: %v", err)
	}
	if _, err := served(t, srv, UpstreamConfig(trust, "other.example")); err == nil {
		t.Fatal("a certificate for broker.example passed for other.example")
	}
	distrust := mustStore(t, testcerts.Files{CA: testcerts.Write(t, dir, "other", broker, otherCA).CA})
	if _, err := served(t, srv, UpstreamConfig(distrust, "broker.example")); err == nil {
		t.Fatal("a broker certificate of another CA passed")
	}
}

func mustStore(t *testing.T, f testcerts.Files) *Store {
	t.Helper()
	s, err := NewStore("test", good2(f), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// syncWriter is a log buffer written and read from several goroutines.
type syncWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
