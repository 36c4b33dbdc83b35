package gm

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"
)

// ErrAuth is returned when a peer fails authentication: wrong secret, wrong
// purpose, or bytes that are not the handshake.
var ErrAuth = errors.New("gm: peer authentication failed")

// AuthConfig is how peers prove themselves to each other. With Secret set,
// both sides run an HMAC-SHA256 challenge–response over fresh nonces; with
// TLS set, the connection is wrapped in TLS first (give it ClientCAs and
// ClientAuth: tls.RequireAndVerifyClientCert for mutual TLS). Both may be
// set; at least one must be.
type AuthConfig struct {
	Secret []byte
	TLS    *tls.Config
	// Timeout bounds the whole handshake (default 5s).
	Timeout time.Duration
}

const (
	authMagic   = "MPPEER1\n"
	nonceLen    = 32
	maxIDOnWire = 255
)

// Validate reports a configuration that authenticates nobody.
func (c AuthConfig) Validate() error {
	if len(c.Secret) == 0 && c.TLS == nil {
		return errors.New("gm: peer auth needs a shared secret or TLS")
	}
	if c.Secret != nil && len(c.Secret) < 16 {
		return errors.New("gm: peer shared secret shorter than 16 bytes")
	}
	return nil
}

// AuthDial runs the dialing side of the handshake on conn. purpose names the
// channel ("gm", "raft", ...) so a connection for one is refused by another.
// It returns the connection to use (TLS-wrapped when configured) and the
// peer's ID. On error conn is closed.
func AuthDial(conn net.Conn, cfg AuthConfig, self, purpose string) (net.Conn, string, error) {
	c, peer, _, err := authenticate(conn, cfg, self, []string{purpose}, true)
	return c, peer, err
}

// AuthAccept runs the accepting side of the handshake; see AuthDial.
func AuthAccept(conn net.Conn, cfg AuthConfig, self, purpose string) (net.Conn, string, error) {
	c, peer, _, err := AuthAcceptAny(conn, cfg, self, purpose)
	return c, peer, err
}

// AuthAcceptAny runs the accepting side of the handshake for a listener
// shared by several purposes: the dialer's purpose must be one of purposes,
// and is returned with the connection and the peer's ID. On error conn is
// closed.
func AuthAcceptAny(conn net.Conn, cfg AuthConfig, self string, purposes ...string) (net.Conn, string, string, error) {
	return authenticate(conn, cfg, self, purposes, false)
}

func authenticate(conn net.Conn, cfg AuthConfig, self string, purposes []string, dialer bool) (net.Conn, string, string, error) {
	if err := cfg.Validate(); err != nil {
		conn.Close()
		return nil, "", "", err
	}
	if len(self) == 0 || len(self) > maxIDOnWire {
		conn.Close()
		return nil, "", "", fmt.Errorf("gm: bad local peer id %q", self)
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	c := conn
	if cfg.TLS != nil {
		var tc *tls.Conn
		if dialer {
			tc = tls.Client(conn, cfg.TLS)
		} else {
			tc = tls.Server(conn, cfg.TLS)
		}
		if err := tc.Handshake(); err != nil {
			conn.Close()
			return nil, "", "", fmt.Errorf("%w: tls: %v", ErrAuth, err)
		}
		c = tc
	}
	peer, purpose, err := challenge(c, cfg.Secret, self, purposes, dialer)
	if err != nil {
		c.Close()
		return nil, "", "", err
	}
	_ = c.SetDeadline(time.Time{})
	return c, peer, purpose, nil
}

// challenge: both sides send magic|purpose|id|nonce (the dialer first; the
// acceptor answers with the purpose the dialer asked for, if it is one of
// its own), then each proves it knows the secret with
// HMAC(secret, role|purpose|theirNonce|ourNonce|ourID|theirID).
// Without a secret (TLS only) the proofs are skipped.
func challenge(c net.Conn, secret []byte, self string, purposes []string, dialer bool) (peer, purpose string, err error) {
	var nonce [nonceLen]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", "", fmt.Errorf("gm: nonce: %w", err)
	}
	sendHello := func(purpose string) error {
		hello := make([]byte, 0, len(authMagic)+2+len(purpose)+len(self)+nonceLen)
		hello = append(hello, authMagic...)
		hello = append(hello, byte(len(purpose)))
		hello = append(hello, purpose...)
		hello = append(hello, byte(len(self)))
		hello = append(hello, self...)
		hello = append(hello, nonce[:]...)
		if _, err := c.Write(hello); err != nil {
			return fmt.Errorf("%w: send hello: %v", ErrAuth, err)
		}
		return nil
	}
	if dialer {
		purpose = purposes[0]
		if err := sendHello(purpose); err != nil {
			return "", "", err
		}
	}
	var magic [len(authMagic)]byte
	if _, err := io.ReadFull(c, magic[:]); err != nil || string(magic[:]) != authMagic {
		return "", "", fmt.Errorf("%w: peer did not send the handshake", ErrAuth)
	}
	theirPurpose, err := readShort(c)
	if err != nil || !slices.Contains(purposes, theirPurpose) {
		return "", "", fmt.Errorf("%w: peer speaks %q, want %q", ErrAuth, theirPurpose, strings.Join(purposes, `" or "`))
	}
	peer, err = readShort(c)
	if err != nil || peer == "" {
		return "", "", fmt.Errorf("%w: bad peer id", ErrAuth)
	}
	var theirNonce [nonceLen]byte
	if _, err := io.ReadFull(c, theirNonce[:]); err != nil {
		return "", "", fmt.Errorf("%w: short nonce", ErrAuth)
	}
	if !dialer {
		purpose = theirPurpose
		if err := sendHello(purpose); err != nil {
			return "", "", err
		}
	}
	if len(secret) == 0 {
		return peer, purpose, nil
	}
	role, theirRole := "dial", "accept"
	if !dialer {
		role, theirRole = theirRole, role
	}
	mine := proof(secret, role, purpose, theirNonce[:], nonce[:], self, peer)
	if _, err := c.Write(mine); err != nil {
		return "", "", fmt.Errorf("%w: send proof: %v", ErrAuth, err)
	}
	got := make([]byte, sha256.Size)
	if _, err := io.ReadFull(c, got); err != nil {
		return "", "", fmt.Errorf("%w: peer %q sent no proof", ErrAuth, peer)
	}
	if !hmac.Equal(got, proof(secret, theirRole, purpose, nonce[:], theirNonce[:], peer, self)) {
		return "", "", fmt.Errorf("%w: peer %q does not know the shared secret", ErrAuth, peer)
	}
	return peer, purpose, nil
}

func proof(secret []byte, role, purpose string, challenge, own []byte, id, peer string) []byte {
	m := hmac.New(sha256.New, secret)
	for _, part := range [][]byte{[]byte(role), []byte(purpose), challenge, own, []byte(id), []byte(peer)} {
		var l [2]byte
		l[0], l[1] = byte(len(part)>>8), byte(len(part))
		m.Write(l[:])
		m.Write(part)
	}
	return m.Sum(nil)
}

func readShort(r io.Reader) (string, error) {
	var n [1]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return "", err
	}
	b := make([]byte, n[0])
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b), nil
}
