package config

import (
	"crypto/tls"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mirrorproxy/mirrorproxy/testenv/testcerts"
)

// tlsFiles writes a good identity, an expired one and a stranger's key.
func tlsFiles(t *testing.T) (good, expired, other testcerts.Files) {
	dir := t.TempDir()
	ca := testcerts.NewCA(t, "ca")
	good = testcerts.Write(t, dir, "good", ca.Leaf(t, testcerts.LeafOptions{}), ca)
	expired = testcerts.Write(t, dir, "expired", ca.Leaf(t, testcerts.LeafOptions{Expired: true}), ca)
	other = testcerts.Write(t, dir, "other", ca.Leaf(t, testcerts.LeafOptions{}), ca)
	return good, expired, other
}

func TestTLSGood(t *testing.T) {
	good, _, _ := tlsFiles(t)
	c, err := Parse("c.yaml", fmt.Appendf(nil, "tls:\n  listen: 127.0.0.1:5671\n  cert: %s\n  key: %s\n  ca: %s\n", good.Cert, good.Key, good.CA))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if !c.TLSEnabled() || c.TLSClientAuth() != tls.RequireAndVerifyClientCert {
		t.Errorf("enabled %v, client auth %v; want an amqps listener requiring client certificates (tls.ca set)", c.TLSEnabled(), c.TLSClientAuth())
	}
	c.TLS.ClientAuth = ClientAuthVerifyIfGiven
	if c.TLSClientAuth() != tls.VerifyClientCertIfGiven {
		t.Errorf("verify_if_given: %v", c.TLSClientAuth())
	}
	c.TLS.ClientAuth, c.TLS.CA = "", ""
	if c.TLSClientAuth() != tls.NoClientCert {
		t.Errorf("no ca: %v", c.TLSClientAuth())
	}

	// Flags set the listener, certificate and key.
	c = Default()
	for _, kv := range [][3]string{{"tls.listen", "127.0.0.1:5671", "--tls-listen"}, {"tls.cert", good.Cert, "--tls-cert"}, {"tls.key", good.Key, "--tls-key"}} {
		if err := c.Set(kv[0], kv[1], kv[2]); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Validate(); err != nil || c.TLSClientAuth() != tls.NoClientCert {
		t.Fatalf("flags: %v, client auth %v", err, c.TLSClientAuth())
	}
	if err := c.Set("tls.cert", filepath.Join(t.TempDir(), "none.crt"), "--tls-cert"); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "flag --tls-cert: tls.cert: ") || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("a missing --tls-cert: %v", err)
	}
}

func TestTLSErrors(t *testing.T) {
	good, expired, other := tlsFiles(t)
	missing := filepath.Join(t.TempDir(), "missing.crt")
	const group = "node:\n  name: a\npeers:\n  - {name: a, client_address: 127.0.0.1:1, gm_address: 127.0.0.1:2, raft_address: 127.0.0.1:3}\nbroker:\n  username: guest\n"
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"every problem at once", fmt.Sprintf(`tls:
  listen: 127.0.0.1:5671
  cert: %s
  key: %s
  client_auth: require
upstream:
  tls:
    server_name: broker
`, missing, good.Key), []string{
			`c.yaml:3: tls.cert: "` + missing + `" does not exist`,
			`c.yaml:5: tls.client_auth: "require" verifies client certificates: it needs tls.ca, the CAs that sign them`,
			`c.yaml:8: upstream.tls.server_name: is set but upstream.tls.enabled is false; set enabled: true or remove it`,
		}},
		{"expired", fmt.Sprintf("tls:\n  listen: :5671\n  cert: %s\n  key: %s\n", expired.Cert, expired.Key), []string{
			fmt.Sprintf(`c.yaml:3: tls.cert: %q: certificate "localhost" expired on `, expired.Cert),
		}},
		{"key of another certificate", fmt.Sprintf("tls:\n  listen: :5671\n  cert: %s\n  key: %s\n", good.Cert, other.Key), []string{
			fmt.Sprintf(`c.yaml:4: tls.key: %q does not go with the certificate %q`, other.Key, good.Cert),
		}},
		{"no key", "tls:\n  listen: :5671\n  cert: " + good.Cert + "\n", []string{
			`c.yaml:3: tls.cert: an amqps listener (tls.listen) needs tls.cert and tls.key (--tls-cert, --tls-key)`,
		}},
		{"no listener", "tls:\n  cert: " + good.Cert + "\n  ca: " + good.CA + "\n", []string{
			`c.yaml:2: tls.cert: is set but tls.listen is empty: no amqps listener would use it; set tls.listen (or --tls-listen) or remove it`,
			`c.yaml:3: tls.ca: is set but tls.listen is empty: no amqps listener would use it; set tls.listen (or --tls-listen) or remove it`,
		}},
		{"same port", fmt.Sprintf("listen:\n  address: 127.0.0.1:5673\ntls:\n  listen: 127.0.0.1:5673\n  cert: %s\n  key: %s\n  client_auth: sometimes\n", good.Cert, good.Key), []string{
			`c.yaml:4: tls.listen: "127.0.0.1:5673" is listen.address too: the amqps listener needs a port of its own`,
			`c.yaml:7: tls.client_auth: "sometimes" is not one of none, verify_if_given, require`,
		}},
		{"ca unused", fmt.Sprintf("tls:\n  listen: :5671\n  cert: %s\n  key: %s\n  ca: %s\n  client_auth: none\n  reload_interval: -1s\n", good.Cert, good.Key, good.CA), []string{
			`c.yaml:5: tls.ca: is set but tls.client_auth is none, so no client certificate would be checked against it; remove one of them`,
			`c.yaml:7: tls.reload_interval: -1s is negative (0 turns polling off)`,
		}},
		{"upstream tls in a group", group + "gm:\n  secret: a secret that is long enough\nupstream:\n  tls:\n    enabled: true\n", []string{
			`c.yaml:11: upstream.tls.enabled: is not built yet for a node of a group: the sidecar's own broker connections (mirror apply, sync, health probe) speak plain AMQP; let the broker listen on a plain port on loopback for its sidecar`,
		}},
		{"upstream ca missing", "upstream:\n  tls:\n    enabled: true\n    ca: " + missing + "\n", []string{
			`c.yaml:4: upstream.tls.ca: "` + missing + `" does not exist`,
		}},
		{"gm tls incomplete", group + "gm:\n  tls:\n    cert: " + good.Cert + "\n", []string{
			`c.yaml:9: gm.tls.cert: mutual TLS between peers needs gm.tls.cert, gm.tls.key and gm.tls.ca, all three`,
		}},
		{"gm tls without a group", "gm:\n  tls:\n    cert: " + good.Cert + "\n", []string{
			`c.yaml:3: gm.tls.cert: gm.tls is only read for a node of a group: set node.name, or remove gm.tls`,
		}},
		{"gm tls expired", group + fmt.Sprintf("gm:\n  tls:\n    cert: %s\n    key: %s\n    ca: %s\n", expired.Cert, expired.Key, expired.CA), []string{
			fmt.Sprintf(`c.yaml:9: gm.tls.cert: %q: certificate "localhost" expired on `, expired.Cert),
		}},
		{"gm tls instead of a secret", group + fmt.Sprintf("gm:\n  tls:\n    cert: %s\n    key: %s\n    ca: %s\n", good.Cert, good.Key, good.CA), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := checkErrors(t, "c.yaml", tc.yaml)
			ok := len(got) == len(tc.want)
			for i := 0; ok && i < len(got); i++ {
				ok = strings.HasPrefix(got[i], tc.want[i])
			}
			if !ok {
				t.Errorf("errors:\n  %s\nwant (prefixes):\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}
