// Package certs loads the sidecar's TLS material from PEM files — a
// certificate with its key, and a CA bundle — and reloads it while the
// sidecar runs: on Reload (SIGHUP) and when the files change (Watch polls
// their modification time, size and identity). A new set that does not
// load, does not match or is not valid now is refused: the old one stays in
// use and the reason is logged. Connections already open keep the
// certificate they were made with; new handshakes take the current one.
//
// The tls.Config values it builds read the current material on every
// handshake: ServerConfig for the client-facing amqps listener, PeerConfig
// for mutual TLS between sidecars (both directions), ClientConfig for the
// connection to the broker.
package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Files names the PEM files of one TLS identity. Cert and Key go together
// (both or neither); CA is optional.
type Files struct {
	Cert, Key, CA string
}

func (f Files) paths() []string {
	var ps []string
	for _, p := range []string{f.Cert, f.Key, f.CA} {
		if p != "" {
			ps = append(ps, p)
		}
	}
	return ps
}

// Problem is one thing wrong with the files; Field is "cert", "key" or "ca".
type Problem struct {
	Field string
	Msg   string
}

func (p Problem) Error() string { return p.Field + ": " + p.Msg }

// Problems are every problem found in one set of files.
type Problems []Problem

func (ps Problems) Error() string {
	s := ""
	for i, p := range ps {
		if i > 0 {
			s += "; "
		}
		s += p.Error()
	}
	return s
}

// Material is one loaded set.
type Material struct {
	// Cert is the certificate chain with its key; nil when Files.Cert is "".
	Cert *tls.Certificate
	// Leaf is Cert's first certificate.
	Leaf *x509.Certificate
	// Pool holds the CA bundle's certificates; nil when Files.CA is "".
	Pool *x509.CertPool
}

// Load reads and checks the files at now: the certificate parses, the key
// is its key, the certificate is valid at now, the CA file holds at least
// one certificate. It returns every problem at once.
func Load(f Files, now time.Time) (*Material, error) {
	var m Material
	var ps Problems
	if f.Cert != "" || f.Key != "" {
		cert, leaf, pairProblems := loadPair(f.Cert, f.Key, now)
		ps = append(ps, pairProblems...)
		m.Cert, m.Leaf = cert, leaf
	}
	if f.CA != "" {
		pool, err := loadPool(f.CA)
		if err != nil {
			ps = append(ps, Problem{"ca", err.Error()})
		}
		m.Pool = pool
	}
	if len(ps) > 0 {
		return nil, ps
	}
	return &m, nil
}

func loadPair(certFile, keyFile string, now time.Time) (*tls.Certificate, *x509.Certificate, Problems) {
	var ps Problems
	if certFile == "" {
		return nil, nil, Problems{{"cert", "is empty, but key is set: give both"}}
	}
	if keyFile == "" {
		return nil, nil, Problems{{"key", "is empty, but cert is set: give both"}}
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		ps = append(ps, Problem{"cert", readError(certFile, err)})
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		ps = append(ps, Problem{"key", readError(keyFile, err)})
	}
	if len(ps) > 0 {
		return nil, nil, ps
	}
	leaf, err := firstCert(certPEM)
	if err != nil {
		return nil, nil, Problems{{"cert", fmt.Sprintf("%q: %v", certFile, err)}}
	}
	if b, _ := pem.Decode(keyPEM); b == nil || !isKeyBlock(b.Type) {
		return nil, nil, Problems{{"key", fmt.Sprintf("%q holds no PEM private key", keyFile)}}
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, Problems{{"key", fmt.Sprintf("%q does not go with the certificate %q: %v", keyFile, certFile, err)}}
	}
	if msg := validity(leaf, now); msg != "" {
		return nil, nil, Problems{{"cert", fmt.Sprintf("%q: %s", certFile, msg)}}
	}
	pair.Leaf = leaf
	return &pair, leaf, nil
}

func isKeyBlock(t string) bool {
	return t == "PRIVATE KEY" || t == "RSA PRIVATE KEY" || t == "EC PRIVATE KEY"
}

// validity says why leaf cannot be used at now, or "".
func validity(leaf *x509.Certificate, now time.Time) string {
	switch {
	case now.After(leaf.NotAfter):
		return fmt.Sprintf("certificate %q expired on %s", leaf.Subject.CommonName, leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return fmt.Sprintf("certificate %q is not valid before %s", leaf.Subject.CommonName, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return ""
}

func readError(path string, err error) string {
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Sprintf("%q does not exist", path)
	}
	return fmt.Sprintf("cannot read %q: %v", path, errors.Unwrap(err))
}

// firstCert parses the first CERTIFICATE block of data.
func firstCert(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("holds no PEM certificate")
		}
		if b.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("certificate does not parse: %w", err)
			}
			return c, nil
		}
	}
}

func loadPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, errors.New(readError(path, err))
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%q: certificate %d does not parse: %w", path, n+1, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("%q holds no PEM certificate", path)
	}
	return pool, nil
}

// Store holds the current Material of one set of Files and reloads it.
// Its methods may be called from any goroutine.
type Store struct {
	name  string // the config section, for logs: "tls", "gm.tls", "upstream.tls"
	files Files
	log   zerolog.Logger
	now   func() time.Time

	cur atomic.Pointer[Material]

	mu     sync.Mutex // serialises reloads; guards stamps
	stamps []os.FileInfo
}

// ExpiryWarning is how close to its end a loaded certificate is logged
// with a warning.
const ExpiryWarning = 14 * 24 * time.Hour

// NewStore loads f and returns a Store serving it. name is the config
// section, used in logs. An error lists every problem with the files.
func NewStore(name string, f Files, log zerolog.Logger) (*Store, error) {
	s := &Store{name: name, files: f, log: log.With().Str("tls", name).Logger(), now: time.Now}
	s.stamps = stat(f)
	m, err := Load(f, s.now())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	s.cur.Store(m)
	s.logLoaded(m, "certificates loaded")
	return s, nil
}

// Current is the material in use.
func (s *Store) Current() *Material { return s.cur.Load() }

// Reload loads the files again. On success the new material serves every
// handshake from now on and it returns nil; otherwise the old one stays
// and it returns (and logs) why. why says what asked ("SIGHUP", "files
// changed").
func (s *Store) Reload(why string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stamps = stat(s.files)
	return s.reloadLocked(why)
}

func (s *Store) reloadLocked(why string) error {
	m, err := Load(s.files, s.now())
	if err != nil {
		s.log.Error().Err(err).Str("trigger", why).
			Msg("new TLS certificates refused; the ones loaded before stay in use")
		return fmt.Errorf("%s: %w", s.name, err)
	}
	s.cur.Store(m)
	s.logLoaded(m, "certificates reloaded")
	return nil
}

func (s *Store) logLoaded(m *Material, msg string) {
	ev := s.log.Info() //nolint:zerologlint // sent with Msg below
	if m.Leaf != nil {
		ev = ev.Str("subject", m.Leaf.Subject.String()).Str("serial", m.Leaf.SerialNumber.String()).
			Time("not_after", m.Leaf.NotAfter)
	}
	ev.Bool("ca", m.Pool != nil).Msg(msg)
	if m.Leaf != nil {
		if left := m.Leaf.NotAfter.Sub(s.now()); left < ExpiryWarning {
			s.log.Warn().Time("not_after", m.Leaf.NotAfter).Str("left", left.Round(time.Minute).String()).
				Msg("the TLS certificate expires soon; replace the files (they are reloaded without a restart)")
		}
	}
}

// check reloads when a file changed since the last look.
func (s *Store) check() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := stat(s.files)
	if sameStamps(now, s.stamps) {
		return
	}
	s.stamps = now
	// A refused set is not retried until the files change again: a
	// half-written pair logs once, and the rest of the write reloads it.
	_ = s.reloadLocked("files changed")
}

// Watch polls the files every interval until ctx ends and reloads when one
// changed (its modification time, size or identity: a file renamed over
// it counts). interval <= 0 returns at once: reloads come only on Reload.
func (s *Store) Watch(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.check()
		}
	}
}

// stat is one FileInfo per path of f (nil for a path that cannot be
// read: it changes when the file comes back).
func stat(f Files) []os.FileInfo {
	var out []os.FileInfo
	for _, p := range f.paths() {
		fi, err := os.Stat(p)
		if err != nil {
			fi = nil
		}
		out = append(out, fi)
	}
	return out
}

func sameStamps(a, b []os.FileInfo) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		switch {
		case a[i] == nil && b[i] == nil:
		case a[i] == nil || b[i] == nil:
			return false
		case !os.SameFile(a[i], b[i]), !a[i].ModTime().Equal(b[i].ModTime()), a[i].Size() != b[i].Size():
			return false
		}
	}
	return true
}
