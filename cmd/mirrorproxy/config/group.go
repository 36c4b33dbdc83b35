package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/mirrorproxy/mirrorproxy/replicate"
)

// Node names this sidecar in its group. An empty name runs a plain proxy
// (no group: the other group sections must be absent).
type Node struct {
	Name string `yaml:"name"`
}

// Peer is one node of the group. peers lists every node, this one
// included, in bootstrap order: the first starts the group and is its first
// master.
type Peer struct {
	Name string `yaml:"name"`
	// ClientAddress is where the node's sidecar accepts clients (host:port
	// as other sidecars reach it): clients of a mirror are forwarded there
	// while that node is master.
	ClientAddress string `yaml:"client_address"`
	// GMAddress and RaftAddress are the node's ring and raft addresses; a
	// sidecar listens on its own entry's.
	GMAddress   string `yaml:"gm_address"`
	RaftAddress string `yaml:"raft_address"`
}

// GM tunes the guaranteed-multicast ring and peer authentication.
type GM struct {
	// Secret is the shared secret every peer proves (gm and raft links),
	// at least 16 bytes.
	Secret string `yaml:"secret"`
	// Window bounds the master's ops not yet applied by every member;
	// publishers wait beyond it.
	Window uint32 `yaml:"window"`
	// HeartbeatInterval is how often a node tells each peer it is alive.
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`
	// TLS is mutual TLS between the peers, beside or instead of Secret
	// (tls.go).
	TLS PeerTLS `yaml:"tls"`
}

// Raft tunes the view store.
type Raft struct {
	// FailureTimeout: a member not heard from for this long is removed
	// from the view. It must exceed LeaseDuration.
	FailureTimeout time.Duration `yaml:"failure_timeout"`
	// LeaseDuration: how long a node keeps acting on the view after it
	// last heard from the raft leader.
	LeaseDuration time.Duration `yaml:"lease_duration"`
	// DataDir is where this node keeps its raft state (created 0700; one
	// per node). Empty keeps it in memory: a restarted node comes back as a
	// new voter, and a group restarted whole loses its view.
	DataDir string `yaml:"data_dir"`
	// MoveSessions moves the sessions of clients of a surviving sidecar to
	// the new master after a failover, keeping their connections
	// (experimental, off by default: docs/FAILOVER.md, "Moving a
	// session"); off, they are closed with 320 and the clients reconnect.
	MoveSessions bool `yaml:"move_sessions"`
}

// Broker holds the sidecar's own credentials on its broker (mirror apply).
type Broker struct {
	Username string `yaml:"username"`
	Password string `yaml:"password"`
}

// PolicySpec is one policy, with the keys of RabbitMQ's definitions export.
type PolicySpec struct {
	Vhost      string         `yaml:"vhost"`
	Name       string         `yaml:"name"`
	Pattern    string         `yaml:"pattern"`
	ApplyTo    string         `yaml:"apply-to"`
	Priority   int            `yaml:"priority"`
	Definition map[string]any `yaml:"definition"`
}

// Spec converts to replicate's form.
func (p PolicySpec) Spec() replicate.Spec {
	return replicate.Spec{Vhost: p.Vhost, Name: p.Name, Pattern: p.Pattern, ApplyTo: p.ApplyTo,
		Priority: p.Priority, Definition: p.Definition}
}

// Grouped reports whether this sidecar runs as a node of a group.
func (c *Config) Grouped() bool { return c.Node.Name != "" }

// BrokerURL is the sidecar's own URL for its broker (upstream.address with
// broker credentials).
func (c *Config) BrokerURL() string {
	u := url.URL{Scheme: "amqp", User: url.UserPassword(c.Broker.Username, c.Broker.Password), Host: c.Upstream.Address, Path: "/"}
	return u.String()
}

// PolicySet builds the validated policies.
func (c *Config) PolicySet() (*replicate.Policies, error) {
	ps := &replicate.Policies{}
	for _, s := range c.Policies {
		p, err := s.Spec().Policy()
		if err != nil {
			return nil, err
		}
		if err := ps.Set(p); err != nil {
			return nil, err
		}
	}
	return ps, nil
}

// validateGroup checks the group sections.
func (v *validator) validateGroup() {
	c := v.c
	if !c.Grouped() {
		// gm, raft and broker may stay at their values (the example file
		// shows them); peers and policies would mislead.
		if len(c.Peers) > 0 {
			v.fail("peers", "is only read for a node of a group: set node.name, or remove peers")
		}
		if len(c.Policies) > 0 {
			v.fail("policies", "are only read for a node of a group: set node.name, or remove policies")
		}
		return
	}
	if len(c.Peers) == 0 && v.ok("peers") {
		v.fail(v.setOne("peers", "node.name"), "a node of a group needs peers: every node, this one included, in bootstrap order")
	}
	names := map[string]int{}
	self := false
	for i, p := range c.Peers {
		at := fmt.Sprintf("peers[%d]", i)
		if p.Name == "" {
			v.fail(at, "needs a name")
		} else if first, dup := names[p.Name]; dup {
			v.fail(at+".name", "%q is listed twice (first as peers[%d])", p.Name, first)
		} else {
			names[p.Name] = i
		}
		self = self || p.Name == c.Node.Name
		for _, a := range []struct{ key, val string }{
			{"client_address", p.ClientAddress}, {"gm_address", p.GMAddress}, {"raft_address", p.RaftAddress},
		} {
			if a.val == "" {
				v.fail(at, "needs %s", a.key)
				continue
			}
			v.hostPort(at+"."+a.key, a.val, true)
		}
	}
	if len(c.Peers) > 0 && !self && v.ok("peers") {
		v.fail("node.name", "%q is not among the peers; list this node there too", c.Node.Name)
	}
	switch {
	case c.GM.Secret == "" && c.GM.TLS.Set():
		// Peers prove themselves with certificates (validateTLS).
	case c.GM.Secret == "":
		v.fail(v.setOne("gm.secret", "gm", "node.name"), "a node of a group needs gm.secret, the shared secret its peers prove (at least 16 bytes), or gm.tls (mutual TLS), or both")
	case len(c.GM.Secret) < 16:
		v.fail("gm.secret", "is %d bytes; use at least 16", len(c.GM.Secret))
	}
	if c.GM.Window == 0 {
		v.fail("gm.window", "must be more than 0")
	}
	v.positive("gm.heartbeat_interval", c.GM.HeartbeatInterval)
	v.positive("raft.failure_timeout", c.Raft.FailureTimeout)
	v.positive("raft.lease_duration", c.Raft.LeaseDuration)
	if c.Raft.FailureTimeout <= c.Raft.LeaseDuration && v.ok("raft.failure_timeout") && v.ok("raft.lease_duration") {
		v.fail(v.setOne("raft.failure_timeout", "raft.lease_duration"),
			"raft.failure_timeout %v must exceed raft.lease_duration %v, so a cut-off master fences itself before it is replaced",
			c.Raft.FailureTimeout, c.Raft.LeaseDuration)
	}
	if d := c.Raft.DataDir; d != "" {
		if fi, err := os.Stat(d); err == nil && !fi.IsDir() {
			v.fail("raft.data_dir", "%q is a file; name a directory (created if missing), one per node", d)
		}
	}
	if c.Broker.Username == "" {
		v.fail(v.setOne("broker.username", "broker", "node.name"), "a node of a group needs broker.username for its own broker connections")
	}
	for i, s := range c.Policies {
		at := fmt.Sprintf("policies[%d]", i)
		if _, err := s.Spec().Policy(); err != nil {
			key := at
			var pe *replicate.PolicyError
			if errors.As(err, &pe) {
				switch pe.Key {
				case "vhost", "name", "pattern", "apply-to", "priority":
					key = at + "." + pe.Key
				default:
					key = at + ".definition"
				}
				if _, set := c.where[key]; !set {
					key = at
				}
			}
			v.fail(key, "%v", err)
		}
	}
}
