package config

import (
	"crypto/tls"
	"errors"
	"time"

	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/certs"
)

// TLS is the amqps listener for clients (docs/TLS.md).
type TLS struct {
	// Listen is the amqps listener's host:port; empty: no TLS listener.
	Listen string `yaml:"listen"`
	// Cert and Key are PEM files: the sidecar's certificate (chain) and
	// its private key.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// CA is a PEM bundle of the CAs that sign client certificates.
	CA string `yaml:"ca"`
	// ClientAuth is none, verify_if_given or require; empty means require
	// when CA is set and none otherwise.
	ClientAuth string `yaml:"client_auth"`
	// ReloadInterval is how often the certificate files of every TLS
	// section (tls, upstream.tls, gm.tls) are checked for changes; 0 turns
	// the polling off (SIGHUP still reloads).
	ReloadInterval time.Duration `yaml:"reload_interval"`
}

// UpstreamTLS is TLS towards the broker.
type UpstreamTLS struct {
	// Enabled makes the connections to upstream.address TLS.
	Enabled bool `yaml:"enabled"`
	// CA is a PEM bundle the broker's certificate must chain to; empty:
	// the system's roots.
	CA string `yaml:"ca"`
	// ServerName is the name the broker's certificate must carry; empty:
	// the host of upstream.address.
	ServerName string `yaml:"server_name"`
	// Cert and Key are the sidecar's client certificate, shown when the
	// broker asks for one (optional, both or neither).
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// PeerTLS is mutual TLS between the sidecars of a group (gm, raft and the
// peer links), beside or instead of gm.secret.
type PeerTLS struct {
	// Cert and Key are this node's certificate and key, shown to peers in
	// both directions; CA is the bundle every peer's certificate must chain
	// to. All three or none.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	CA   string `yaml:"ca"`
}

// Set reports whether any key of the section is set.
func (p PeerTLS) Set() bool { return p.Cert != "" || p.Key != "" || p.CA != "" }

// Client-auth modes of the amqps listener (tls.client_auth).
const (
	ClientAuthNone          = "none"
	ClientAuthVerifyIfGiven = "verify_if_given"
	ClientAuthRequire       = "require"
)

// DefaultTLSReloadInterval is tls.reload_interval's default.
const DefaultTLSReloadInterval = 5 * time.Second

// TLSEnabled reports whether the sidecar serves an amqps listener.
func (c *Config) TLSEnabled() bool { return c.TLS.Listen != "" }

// TLSClientAuth is the amqps listener's client-certificate mode, with the
// default applied.
func (c *Config) TLSClientAuth() tls.ClientAuthType {
	mode := c.TLS.ClientAuth
	if mode == "" {
		mode = ClientAuthNone
		if c.TLS.CA != "" {
			mode = ClientAuthRequire
		}
	}
	switch mode {
	case ClientAuthRequire:
		return tls.RequireAndVerifyClientCert
	case ClientAuthVerifyIfGiven:
		return tls.VerifyClientCertIfGiven
	}
	return tls.NoClientCert
}

// TLSFiles are the amqps listener's files.
func (c *Config) TLSFiles() certs.Files {
	return certs.Files{Cert: c.TLS.Cert, Key: c.TLS.Key, CA: c.TLS.CA}
}

// UpstreamTLSFiles are the files of TLS towards the broker.
func (c *Config) UpstreamTLSFiles() certs.Files {
	u := c.Upstream.TLS
	return certs.Files{Cert: u.Cert, Key: u.Key, CA: u.CA}
}

// PeerTLSFiles are the files of mutual TLS between the sidecars.
func (c *Config) PeerTLSFiles() certs.Files {
	p := c.GM.TLS
	return certs.Files{Cert: p.Cert, Key: p.Key, CA: p.CA}
}

// validateTLS checks the tls, upstream.tls and gm.tls sections, and loads
// their files as the sidecar would, so that `config check` finds a
// missing, mismatched or expired certificate.
func (v *validator) validateTLS() {
	c := v.c
	t := c.TLS
	if t.ReloadInterval < 0 {
		v.fail("tls.reload_interval", "%v is negative (0 turns polling off)", t.ReloadInterval)
	}
	if t.ClientAuth != "" {
		v.oneOf("tls.client_auth", t.ClientAuth, ClientAuthNone, ClientAuthVerifyIfGiven, ClientAuthRequire)
	}
	if t.Listen == "" {
		for _, k := range []struct{ key, val string }{
			{"tls.cert", t.Cert}, {"tls.key", t.Key}, {"tls.ca", t.CA}, {"tls.client_auth", t.ClientAuth},
		} {
			if k.val != "" {
				v.fail(k.key, "is set but tls.listen is empty: no amqps listener would use it; set tls.listen (or --tls-listen) or remove it")
			}
		}
	} else {
		v.hostPort("tls.listen", t.Listen, false)
		if t.Listen == c.Listen.Address && v.ok("tls.listen") {
			v.fail(v.setOne("tls.listen", "listen.address"), "%q is listen.address too: the amqps listener needs a port of its own", t.Listen)
		}
		if t.Cert == "" || t.Key == "" {
			v.fail(v.setOne("tls.cert", "tls.key", "tls.listen"), "an amqps listener (tls.listen) needs tls.cert and tls.key (--tls-cert, --tls-key)")
		} else {
			v.files("tls", c.TLSFiles())
		}
		switch {
		case (t.ClientAuth == ClientAuthRequire || t.ClientAuth == ClientAuthVerifyIfGiven) && t.CA == "":
			v.fail("tls.client_auth", "%q verifies client certificates: it needs tls.ca, the CAs that sign them", t.ClientAuth)
		case t.ClientAuth == ClientAuthNone && t.CA != "":
			v.fail("tls.ca", "is set but tls.client_auth is none, so no client certificate would be checked against it; remove one of them")
		}
	}

	u := c.Upstream.TLS
	if !u.Enabled {
		for _, k := range []struct{ key, val string }{
			{"upstream.tls.ca", u.CA}, {"upstream.tls.server_name", u.ServerName}, {"upstream.tls.cert", u.Cert}, {"upstream.tls.key", u.Key},
		} {
			if k.val != "" {
				v.fail(k.key, "is set but upstream.tls.enabled is false; set enabled: true or remove it")
			}
		}
	} else {
		if c.Grouped() {
			v.fail("upstream.tls.enabled", "is not built yet for a node of a group: the sidecar's own broker connections (mirror apply, sync, health probe) speak plain AMQP; "+
				"let the broker listen on a plain port on loopback for its sidecar")
		}
		v.files("upstream.tls", c.UpstreamTLSFiles())
	}

	p := c.GM.TLS
	switch {
	case !p.Set():
	case !c.Grouped():
		v.fail(v.setOne("gm.tls.cert", "gm.tls.key", "gm.tls.ca"), "gm.tls is only read for a node of a group: set node.name, or remove gm.tls")
	case p.Cert == "" || p.Key == "" || p.CA == "":
		v.fail(v.setOne("gm.tls.cert", "gm.tls.key", "gm.tls.ca"), "mutual TLS between peers needs gm.tls.cert, gm.tls.key and gm.tls.ca, all three")
	default:
		v.files("gm.tls", c.PeerTLSFiles())
	}
}

// files loads f and fails the key of each problem (section.cert, .key, .ca).
func (v *validator) files(section string, f certs.Files) {
	_, err := certs.Load(f, time.Now())
	var ps certs.Problems
	if !errors.As(err, &ps) {
		return
	}
	for _, p := range ps {
		v.fail(section+"."+p.Field, "%s", p.Msg)
	}
}
