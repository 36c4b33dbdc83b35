package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
)

// MinVersion is the oldest TLS version any of the sidecar's TLS ends
// accept (RabbitMQ's default since 3.8 also stops at TLS 1.2).
const MinVersion = tls.VersionTLS12

// ServerConfig is the tls.Config of a listener for AMQP clients: every
// handshake gets the current certificate and, for auth other than
// tls.NoClientCert, the current CA as the clients' trust anchor. The store
// must hold a certificate.
func (s *Store) ServerConfig(auth tls.ClientAuthType) *tls.Config {
	return &tls.Config{
		MinVersion: MinVersion,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m := s.Current()
			return &tls.Config{
				MinVersion:   MinVersion,
				Certificates: []tls.Certificate{*m.Cert},
				ClientAuth:   auth,
				ClientCAs:    m.Pool,
			}, nil
		},
	}
}

// PeerConfig is the tls.Config of mutual TLS between sidecars (gm, raft,
// peer links), used by both the dialling and the accepting side: each
// shows the current certificate and requires the other's, which must
// chain to the current CA. Peers are dialled by address, so no host name
// is checked: holding a certificate of the group's CA is what admits a
// peer, as knowing gm.secret does. The store must hold a certificate and
// a CA.
func (s *Store) PeerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: MinVersion,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.Current().Cert, nil
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.Current().Cert, nil
		},
		// Both directions are verified in VerifyConnection against the CA
		// current at the handshake (so a reload changes it too), without a
		// host name: the standard checks would need a fixed pool and a
		// name per peer.
		ClientAuth:         tls.RequireAnyClientCert,
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyChain(cs.PeerCertificates, s.Current().Pool, "", x509.ExtKeyUsageAny)
		},
	}
}

// UpstreamConfig is the tls.Config of the connections to the broker.
// serverName is the name the broker's certificate must carry (a host name
// or an IP address). With a store holding a CA, the broker's certificate
// must chain to it (the one current at the handshake); without one, to
// the system's roots. A store holding a certificate shows it when the
// broker asks for one. s may be nil.
func UpstreamConfig(s *Store, serverName string) *tls.Config {
	c := &tls.Config{MinVersion: MinVersion, ServerName: serverName}
	if s == nil {
		return c
	}
	if s.Current().Pool != nil {
		c.InsecureSkipVerify = true // verified below, against the CA current at the handshake
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			return verifyChain(cs.PeerCertificates, s.Current().Pool, serverName, x509.ExtKeyUsageServerAuth)
		}
	}
	if s.Current().Cert != nil {
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.Current().Cert, nil
		}
	}
	return c
}

// verifyChain checks that certs (leaf first) chain to roots and, when name
// is not empty, that the leaf names it.
func verifyChain(certs []*x509.Certificate, roots *x509.CertPool, name string, usage x509.ExtKeyUsage) error {
	if len(certs) == 0 {
		return errors.New("the peer sent no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, DNSName: name, KeyUsages: []x509.ExtKeyUsage{usage},
	})
	return err
}
