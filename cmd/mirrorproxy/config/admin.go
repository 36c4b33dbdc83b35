package config

import (
	"net"
	"net/netip"
)

// DefaultAdmin is the admin API's default address: loopback, next to the
// broker management plugin's 15672.
const DefaultAdmin = "127.0.0.1:15673"

// AdminOff as admin.address turns the admin API off.
const AdminOff = "off"

// minAdminToken is the shortest admin.token accepted.
const minAdminToken = 16

// Admin configures the admin HTTP API, which `mirrorproxy ctl` calls. A
// node of a group serves it; a plain proxy does not.
type Admin struct {
	// Address is where the API listens, host:port, or "off". It stays on
	// loopback unless set otherwise.
	Address string `yaml:"address"`
	// Token authorises changes (policies): clients send
	// "Authorization: Bearer TOKEN". Empty makes the API read-only.
	Token string `yaml:"token"`
}

// AdminEnabled reports whether this sidecar serves its admin listener: a
// node of a group unless admin.address is off; a plain proxy (which has
// no admin API, only /metrics, the probes and the status page) only when
// admin.address is set, so that plain sidecars sharing a host do not
// contend for the default port.
func (c *Config) AdminEnabled() bool {
	if c.Admin.Address == AdminOff {
		return false
	}
	if c.Grouped() {
		return true
	}
	_, set := c.where["admin.address"]
	return set
}

// validateAdmin checks the admin section.
func (v *validator) validateAdmin() {
	c := v.c
	if c.Admin.Address != AdminOff {
		v.hostPort("admin.address", c.Admin.Address, false)
	}
	if c.Admin.Token != "" && len(c.Admin.Token) < minAdminToken {
		v.fail("admin.token", "is %d bytes; use at least %d", len(c.Admin.Token), minAdminToken)
	}
	if !v.ok("admin.address") || c.Admin.Address == AdminOff || c.Admin.Token != "" || !c.Grouped() {
		return // a plain proxy's admin listener changes nothing
	}
	// Reads need no token; on an address others reach, say changes are off.
	host, _, err := net.SplitHostPort(c.Admin.Address)
	if err != nil {
		return
	}
	if a, err := netip.ParseAddr(host); host == "" || (err == nil && !a.IsLoopback()) {
		v.fail("admin.address", "%q is reachable from other hosts: set admin.token too (changes need it), or keep the API on loopback", c.Admin.Address)
	}
}
