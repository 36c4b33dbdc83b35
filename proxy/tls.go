package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// ServeTLS is Serve for an amqps listener: each client's connection starts
// with a TLS handshake (after its PROXY header, when Options.ProxyProtocol
// reads one) under cfg, run in the session's own goroutine and bounded by
// Options.HandshakeTimeout; the AMQP session runs inside it. cfg is read
// at every handshake, so a cfg whose GetConfigForClient returns the
// current certificate changes it for new clients without touching open
// sessions. A client whose handshake fails — a certificate the CA does not
// sign, an expired one, none where one is required, plain AMQP — gets one
// log line saying why and its connection closed; nothing else notices.
// The client's address (and a PROXY header's) reaches the core as on a
// plain listener.
func (s *Server) ServeTLS(ln net.Listener, cfg *tls.Config) error {
	if cfg == nil {
		ln.Close()
		return errors.New("proxy: ServeTLS needs a tls.Config")
	}
	return s.serve(ln, cfg)
}

// alertUnexpectedMessage is a TLS record holding a fatal
// unexpected_message alert. RabbitMQ's TLS listener answers a client that
// speaks plain AMQP to it with this alert and closes (its log says
// "unsupported_record_type,65": 65 is the "A" of "AMQP"); Go's TLS server
// just fails the handshake, so the proxy writes the alert itself.
var alertUnexpectedMessage = []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a}

// tlsHandshake runs the server side of the client's TLS handshake. It
// returns false, after one log line and with the connection closed, when
// the handshake fails.
func (s *session) tlsHandshake(ctx context.Context, tc *tls.Conn) bool {
	_ = tc.SetDeadline(time.Now().Add(s.srv.opts.HandshakeTimeout))
	err := tc.HandshakeContext(ctx)
	if err == nil {
		st := tc.ConnectionState()
		lc := s.log.With().Str("tls", tls.VersionName(st.Version))
		if len(st.PeerCertificates) > 0 {
			lc = lc.Str("client_cert", st.PeerCertificates[0].Subject.String())
		}
		s.log = lc.Logger()
		return true
	}
	var rh tls.RecordHeaderError
	if errors.As(err, &rh) && rh.Conn != nil && bytes.HasPrefix(rh.RecordHeader[:], []byte("AMQP")) {
		_ = rh.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = rh.Conn.Write(alertUnexpectedMessage)
	}
	tc.Close()
	reason, quiet := tlsRefusal(err)
	ev := s.log.Warn() //nolint:zerologlint // sent with Msg below
	if quiet {
		ev = s.log.Debug() //nolint:zerologlint // sent with Msg below
	}
	addCertFields(ev, err).Err(err).Msg("refused a TLS client: " + reason)
	return false
}

// tlsRefusal says why a client's TLS handshake failed, in words for the
// log, and whether it is routine (a client that connected and left, the
// server closing) rather than something to warn about.
func tlsRefusal(err error) (reason string, quiet bool) {
	var (
		rh      tls.RecordHeaderError
		invalid x509.CertificateInvalidError
		unknown x509.UnknownAuthorityError
		verify  *tls.CertificateVerificationError
		op      *net.OpError
	)
	switch {
	case errors.As(err, &rh):
		if bytes.HasPrefix(rh.RecordHeader[:], []byte("AMQP")) {
			return "plain AMQP sent to the TLS port (the client did not start TLS: use amqps:// here, or the plain port); answered with a TLS alert and closed", false
		}
		return fmt.Sprintf("not a TLS client: its first bytes %q do not start a TLS handshake", rh.RecordHeader[:]), false
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return "the client's certificate has expired or is not valid yet", false
	case errors.As(err, &invalid):
		return "the client's certificate is not valid: " + invalid.Error(), false
	case errors.As(err, &unknown):
		return "the client's certificate is not signed by a CA in tls.ca", false
	case errors.As(err, &verify):
		return "the client's certificate did not verify", false
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		return "the client sent no certificate, and tls.client_auth is require", false
	case errors.As(err, &op) && op.Op == "remote error":
		return "the client aborted the handshake (does it trust this sidecar's certificate and name it correctly?)", false
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "TLS handshake timeout (limits.handshake_timeout)", false
	case errors.Is(err, context.Canceled):
		return "the server is closing", true
	case connEnded(err):
		// Most often a readiness probe: a bare TCP connect, then gone.
		return "the client left during the TLS handshake", true
	}
	return "TLS handshake failed", false
}

// addCertFields adds the refused client certificate's subject, issuer and
// validity to ev, when err carries it.
func addCertFields(ev *zerolog.Event, err error) *zerolog.Event {
	var verify *tls.CertificateVerificationError
	if !errors.As(err, &verify) || len(verify.UnverifiedCertificates) == 0 {
		return ev
	}
	c := verify.UnverifiedCertificates[0]
	return ev.Str("cert_subject", c.Subject.String()).Str("cert_issuer", c.Issuer.String()).
		Str("cert_serial", c.SerialNumber.String()).Time("cert_not_after", c.NotAfter)
}

// brokerTLS runs the client side of a TLS handshake with the broker on c,
// bounded by ctx. On error c is closed.
func brokerTLS(ctx context.Context, c net.Conn, cfg *tls.Config, addr string) (net.Conn, error) {
	if cfg.ServerName == "" && !cfg.InsecureSkipVerify {
		host, _, _ := net.SplitHostPort(addr)
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("TLS handshake with the broker %s: %w", addr, err)
	}
	return tc, nil
}
