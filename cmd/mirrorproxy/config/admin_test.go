package config

import (
	"strings"
	"testing"
)

const adminGroup = "node:\n  name: a\npeers:\n  - {name: a, client_address: 127.0.0.1:5673, gm_address: 127.0.0.1:5680, raft_address: 127.0.0.1:5681}\n" +
	"gm:\n  secret: a shared secret of enough length\nbroker:\n  username: u\n"

func TestAdminDefaults(t *testing.T) {
	c, err := Parse("c.yaml", []byte(adminGroup))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Admin.Address != "127.0.0.1:15673" || c.Admin.Token != "" || !c.AdminEnabled() {
		t.Fatalf("admin = %+v enabled=%v; want loopback 127.0.0.1:15673, no token, enabled", c.Admin, c.AdminEnabled())
	}
	if Default().AdminEnabled() {
		t.Error("a plain proxy (no node.name) serves the admin listener without admin.address set")
	}
}

// TestAdminPlainProxy: a plain proxy serves its admin listener (/metrics,
// the probes, the status page) only when admin.address is set, in the file
// or by --admin, and needs no token on any address: it changes nothing.
func TestAdminPlainProxy(t *testing.T) {
	c, err := Parse("c.yaml", []byte("admin:\n  address: \":15673\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("a plain proxy's admin listener on every interface: %v", err)
	}
	if !c.AdminEnabled() {
		t.Error("admin.address set in the file: want the admin listener")
	}
	c = Default()
	if err := c.Set("admin.address", "127.0.0.1:9990", "--admin"); err != nil {
		t.Fatal(err)
	}
	if !c.AdminEnabled() || c.Admin.Address != "127.0.0.1:9990" {
		t.Errorf("--admin: enabled %v address %q", c.AdminEnabled(), c.Admin.Address)
	}
	if err := c.Set("admin.address", "off", "--admin"); err != nil {
		t.Fatal(err)
	}
	if c.AdminEnabled() {
		t.Error("--admin off: want no admin listener")
	}
}

func TestAdminSection(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       string // "" for valid
		enabled    bool
	}{
		{"off", "admin:\n  address: \"off\"\n", "", false},
		{"loopback with token", "admin:\n  address: 127.0.0.1:9999\n  token: 0123456789abcdef\n", "", true},
		{"short token", "admin:\n  token: short\n", `c.yaml:10: admin.token: is 5 bytes; use at least 16`, true},
		{"bad address", "admin:\n  address: 15673\n", `c.yaml:10: admin.address: "15673" is not host:port`, true},
		{"every interface without token", "admin:\n  address: :15673\n",
			`c.yaml:10: admin.address: ":15673" is reachable from other hosts: set admin.token too`, true},
		{"public address without token", "admin:\n  address: 10.0.0.1:15673\n",
			`c.yaml:10: admin.address: "10.0.0.1:15673" is reachable from other hosts`, true},
		{"every interface with token", "admin:\n  address: :15673\n  token: 0123456789abcdef\n", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("c.yaml", []byte(adminGroup+tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			err = c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate = %v; want it to contain %q", err, tc.want)
			}
			if c.AdminEnabled() != tc.enabled {
				t.Errorf("AdminEnabled = %v", c.AdminEnabled())
			}
		})
	}
}
