package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"
)

// A group of sidecars (Options.Group). After every broker is ready,
// StartGroup forms the group (form):
//
//  1. creates the sidecars' broker user on every broker, unless it is
//     guest;
//  2. picks every sidecar's addresses: on the local backend four loopback
//     ports per node (client, gm, raft, admin), each reserved by a socket
//     left in TIME_WAIT, so no other process is handed it by bind(0) or
//     connect() for a minute (see reservePorts), while the sidecar binds
//     it explicitly;
//  3. writes each sidecar's config (every node as a peer, the secret,
//     the broker user, the policies, the admin API, the raft directory)
//     and starts the sidecars in parallel; a sidecar is up once its admin
//     API answers;
//  4. waits until every sidecar's view lists all nodes and they agree on
//     a master (WaitFormed).
//
// Should a port still be taken (a process that named it explicitly), the
// sidecar exits with "address already in use": every sidecar is then
// killed, its raft state removed, and steps 2-4 run again on new ports,
// up to startAttempts times. A restarted sidecar reads the same config, so
// it keeps its ports; while it is down, its ports are reserved again the
// same way (the reservation lasts a minute).

// ErrNoGroup is returned by the group methods of a group started without
// Options.Group.
var ErrNoGroup = errors.New("testenv: not a group of sidecars (set Options.Group)")

// ErrNoMaster is returned by Group.Master when no majority of the nodes'
// sidecars names one master.
var ErrNoMaster = errors.New("testenv: no master agreed by a majority of the sidecars")

// groupNode is what a node driver needs for Options.Group: only the local
// backend's has it (withDefaults refuses Group with any other backend).
// Before the sidecar's first start, groupAddrs picks the sidecar's
// addresses (new ones on every call), sets the Node's address fields and
// returns them; writeSidecarConfig stores the config every start of the
// sidecar reads; resetSidecar removes the sidecar's state (raft) before a
// new attempt to form the group.
type groupNode interface {
	groupAddrs() (sidecarAddrs, error)
	writeSidecarConfig(content []byte) error
	resetSidecar() error
}

// sidecarAddrs are one sidecar's addresses in its group config.
type sidecarAddrs struct {
	// listen and admin are listen.address and admin.address, as the
	// sidecar binds them; upstream is its broker as it reaches it.
	listen, admin, upstream string
	// client, gm and raft are its peers[] entry: as peers reach it.
	client, gm, raft string
	// raftDir is raft.data_dir as the sidecar sees it ("" in memory).
	raftDir string
}

// sidecarConfig is the part of mirrorproxy's config file testenv writes
// (see config.example.yaml; unknown keys are errors there).
type sidecarConfig struct {
	Listen        addressConfig `yaml:"listen"`
	Upstream      addressConfig `yaml:"upstream"`
	ShutdownGrace string        `yaml:"shutdown_grace,omitempty"`
	Node          struct {
		Name string `yaml:"name"`
	} `yaml:"node"`
	Peers []peerConfig `yaml:"peers"`
	GM    struct {
		Secret            string `yaml:"secret"`
		HeartbeatInterval string `yaml:"heartbeat_interval,omitempty"`
	} `yaml:"gm"`
	Raft struct {
		DataDir        string `yaml:"data_dir,omitempty"`
		FailureTimeout string `yaml:"failure_timeout,omitempty"`
		LeaseDuration  string `yaml:"lease_duration,omitempty"`
		MoveSessions   bool   `yaml:"move_sessions,omitempty"`
	} `yaml:"raft"`
	Broker struct {
		Username string `yaml:"username"`
		Password string `yaml:"password"`
	} `yaml:"broker"`
	Policies []Policy `yaml:"policies"`
	Admin    struct {
		Address string `yaml:"address"`
		Token   string `yaml:"token"`
	} `yaml:"admin"`
}

type addressConfig struct {
	Address string `yaml:"address"`
}

type peerConfig struct {
	Name          string `yaml:"name"`
	ClientAddress string `yaml:"client_address"`
	GMAddress     string `yaml:"gm_address"`
	RaftAddress   string `yaml:"raft_address"`
}

func durationOrEmpty(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return d.String()
}

func memberName(i int) string { return fmt.Sprintf("node-%d", i) }

// groupConfig is node i's config file.
func groupConfig(o *GroupOptions, secret, token string, i int, addrs []sidecarAddrs) ([]byte, error) {
	var c sidecarConfig
	a := addrs[i]
	c.Listen.Address = a.listen
	c.Upstream.Address = a.upstream
	c.ShutdownGrace = durationOrEmpty(o.ShutdownGrace)
	c.Node.Name = memberName(i)
	for j, p := range addrs {
		c.Peers = append(c.Peers, peerConfig{Name: memberName(j), ClientAddress: p.client, GMAddress: p.gm, RaftAddress: p.raft})
	}
	c.GM.Secret = secret
	c.GM.HeartbeatInterval = durationOrEmpty(o.HeartbeatInterval)
	c.Raft.DataDir = a.raftDir
	c.Raft.FailureTimeout = durationOrEmpty(o.FailureTimeout)
	c.Raft.MoveSessions = o.MoveSessions
	c.Raft.LeaseDuration = durationOrEmpty(o.LeaseDuration)
	c.Broker.Username, c.Broker.Password = o.BrokerUser, o.BrokerPassword
	c.Policies = o.Policies
	if c.Policies == nil {
		c.Policies = []Policy{}
	}
	c.Admin.Address, c.Admin.Token = a.admin, token
	b, err := yaml.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("testenv: sidecar config of %s: %w", memberName(i), err)
	}
	return append([]byte("# written by mirrorproxy testenv (Options.Group); see config.example.yaml\n"), b...), nil
}

// form makes the sidecars one group; see the comment at the top.
func (g *Group) form(ctx context.Context) error {
	o := g.opts.Group
	g.Secret, g.AdminToken = o.Secret, o.AdminToken
	began := time.Now()
	for _, n := range g.Nodes {
		n.Member = memberName(n.Index)
	}
	if o.BrokerUser != "guest" {
		if err := g.eachNode(func(n *Node) error { return createBrokerUser(ctx, n, o.BrokerUser, o.BrokerPassword) }); err != nil {
			return err
		}
	}
	for attempt := 1; ; attempt++ {
		err := g.formOnce(ctx, attempt)
		if err == nil {
			g.opts.Logger("testenv: group %s: %d sidecars formed one group in %.1fs (master %s)",
				g.ID, len(g.Nodes), time.Since(began).Seconds(), g.Nodes[0].Member)
			return nil
		}
		var se *StartError
		if !errors.As(err, &se) || !se.retryable || attempt == startAttempts || ctx.Err() != nil {
			return err
		}
		g.opts.Logger("testenv: group %s: sidecars, attempt %d failed (%v); retrying on new ports", g.ID, attempt, se.Err)
		if err := g.eachNode(func(n *Node) error {
			return n.locked(func() error { return errors.Join(n.rt.SidecarKill(), n.rt.(groupNode).resetSidecar()) })
		}); err != nil {
			return err
		}
	}
}

// formOnce picks addresses, writes the configs, starts the sidecars and
// waits for the group to form. On error every sidecar is killed.
func (g *Group) formOnce(ctx context.Context, attempt int) error {
	addrs := make([]sidecarAddrs, len(g.Nodes))
	for i, n := range g.Nodes {
		a, err := n.rt.(groupNode).groupAddrs()
		if err != nil {
			return err
		}
		addrs[i] = a
	}
	if g.opts.beforeSidecars != nil {
		g.opts.beforeSidecars(g, attempt)
	}
	for i, n := range g.Nodes {
		cfg, err := groupConfig(g.opts.Group, g.Secret, g.AdminToken, i, addrs)
		if err != nil {
			return err
		}
		if err := n.rt.(groupNode).writeSidecarConfig(cfg); err != nil {
			return err
		}
	}
	// The first failure stops the other starts, as in StartGroup.
	startCtx, stopStarts := context.WithCancel(ctx)
	defer stopStarts()
	errs := make([]error, len(g.Nodes))
	var wg sync.WaitGroup
	for i, n := range g.Nodes {
		wg.Go(func() {
			if errs[i] = n.Sidecar().Start(startCtx); errs[i] != nil {
				stopStarts()
			}
		})
	}
	wg.Wait()
	if ctx.Err() == nil {
		for i, err := range errs {
			if errors.Is(err, context.Canceled) {
				errs[i] = nil
			}
		}
	}
	err := errors.Join(errs...)
	if err == nil {
		if err = g.WaitFormed(ctx); err != nil {
			var b strings.Builder
			fmt.Fprintf(&b, "%v", err)
			for _, n := range g.Nodes {
				fmt.Fprintf(&b, "\n%s", n.rt.SidecarLogTail(logTailLines/2))
			}
			err = errors.New(b.String())
		}
	}
	if err != nil {
		kills := make([]error, len(g.Nodes))
		for i, n := range g.Nodes {
			kills[i] = n.Sidecar().Kill()
		}
		return errors.Join(append([]error{err}, kills...)...)
	}
	return nil
}

// eachNode runs f for every node in parallel and joins the errors.
func (g *Group) eachNode(f func(n *Node) error) error {
	errs := make([]error, len(g.Nodes))
	var wg sync.WaitGroup
	for i, n := range g.Nodes {
		wg.Go(func() { errs[i] = f(n) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// createBrokerUser makes user a sidecar's broker user on n's broker (see
// config.example.yaml, key broker): impersonator, so that a mirror may
// republish a client's message with its user-id; every permission on "/".
func createBrokerUser(ctx context.Context, n *Node, user, password string) error {
	for _, args := range [][]string{
		{"add_user", user, password},
		{"set_user_tags", user, "impersonator"},
		{"set_permissions", "-p", "/", user, ".*", ".*", ".*"},
	} {
		if _, err := n.Ctl(ctx, args...); err != nil {
			return fmt.Errorf("testenv: create the sidecars' broker user on %s: %w", n.Name, err)
		}
	}
	return nil
}

// View is a group's view as one sidecar's admin API shows it (GET
// /api/nodes).
type View struct {
	// Members are the group's members in ring order.
	Members []Member
	// Master is the member the view names master ("" when none).
	Master string
}

// Member is one member of a View.
type Member struct {
	Name string `json:"name"`
	// Master is true for the node whose broker serves the clients.
	Master bool `json:"master"`
	// JoinEpoch is the view that admitted this incarnation (lower is
	// older).
	JoinEpoch uint64 `json:"join_epoch"`
}

// Has reports whether the view lists the member.
func (v View) Has(member string) bool {
	for _, m := range v.Members {
		if m.Name == member {
			return true
		}
	}
	return false
}

// Names returns the members' names in ring order.
func (v View) Names() []string {
	names := make([]string, len(v.Members))
	for i, m := range v.Members {
		names[i] = m.Name
	}
	return names
}

func (v View) String() string {
	return fmt.Sprintf("members %v, master %q", v.Names(), v.Master)
}

// adminTransport keeps no idle connections: nothing of a closed group
// lingers (the tests check for goroutine leaks).
var adminTransport = &http.Transport{DisableKeepAlives: true}

// adminTimeout bounds one admin API call: a paused sidecar accepts the
// connection (the kernel does) and answers nothing.
const adminTimeout = 2 * time.Second

// adminGet GETs path from the admin API at base and decodes its JSON.
func adminGet(ctx context.Context, base, path string, into any) error {
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: adminTransport}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s%s: %s: %s", base, path, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, into); err != nil {
		return fmt.Errorf("GET %s%s: %w", base, path, err)
	}
	return nil
}

// adminAnswers reports whether the admin API at base answers GET
// /api/nodes.
func adminAnswers(ctx context.Context, base string) bool {
	var ms []Member
	return adminGet(ctx, base, "/api/nodes", &ms) == nil
}

// View returns the group's view as the node's sidecar sees it, from its
// admin API. It fails when the sidecar does not answer within 2s (killed,
// stopped, paused) or the group has no Options.Group (ErrNoGroup).
func (n *Node) View(ctx context.Context) (View, error) {
	if n.AdminURL == "" {
		return View{}, fmt.Errorf("%w: node %s", ErrNoGroup, n.Name)
	}
	var ms []Member
	if err := adminGet(ctx, n.AdminURL, "/api/nodes", &ms); err != nil {
		return View{}, fmt.Errorf("testenv: view of %s: %w", n.Member, err)
	}
	v := View{Members: ms}
	for _, m := range ms {
		if m.Master {
			v.Master = m.Name
		}
	}
	return v, nil
}

// ByMember returns the node named member in the group ("node-1"), or nil.
func (g *Group) ByMember(member string) *Node {
	for _, n := range g.Nodes {
		if n.Member == member {
			return n
		}
	}
	return nil
}

// views asks every node's sidecar for its view, in parallel.
func (g *Group) views(ctx context.Context) ([]View, []error) {
	vs := make([]View, len(g.Nodes))
	errs := make([]error, len(g.Nodes))
	var wg sync.WaitGroup
	for i, n := range g.Nodes {
		wg.Go(func() { vs[i], errs[i] = n.View(ctx) })
	}
	wg.Wait()
	return vs, errs
}

// describeViews is one line per node: its view or why it has none.
func describeViews(g *Group, vs []View, errs []error) string {
	var b strings.Builder
	for i, n := range g.Nodes {
		if errs[i] != nil {
			fmt.Fprintf(&b, "\n  %s: %v", n.Member, errs[i])
		} else {
			fmt.Fprintf(&b, "\n  %s: %v", n.Member, vs[i])
		}
	}
	return b.String()
}

// Master returns the node that a majority of the group's sidecars (more
// than half of all nodes, asked now, in parallel) name master. A sidecar
// that does not answer counts against it, so a master cut off from the
// others, still naming itself, is never the answer. It fails with
// ErrNoMaster, giving each sidecar's view, when there is none.
func (g *Group) Master(ctx context.Context) (*Node, error) {
	if g.opts.Group == nil {
		return nil, ErrNoGroup
	}
	vs, errs := g.views(ctx)
	votes := map[string]int{}
	for i, v := range vs {
		if errs[i] == nil && v.Master != "" {
			votes[v.Master]++
		}
	}
	names := make([]string, 0, len(votes))
	for name := range votes {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if votes[name] > len(g.Nodes)/2 {
			if n := g.ByMember(name); n != nil {
				return n, nil
			}
		}
	}
	return nil, fmt.Errorf("%w:%s", ErrNoMaster, describeViews(g, vs, errs))
}

// WaitMaster polls Master until it returns a node other than those in
// exclude (e.g. the master a test just killed) or ctx ends.
func (g *Group) WaitMaster(ctx context.Context, exclude ...*Node) (*Node, error) {
	if g.opts.Group == nil {
		return nil, ErrNoGroup
	}
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var last error
	for {
		m, err := g.Master(ctx)
		if err == nil {
			found := false
			for _, x := range exclude {
				found = found || x == m
			}
			if !found {
				return m, nil
			}
			err = fmt.Errorf("the master is still %s", m.Member)
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("testenv: waiting for a master: %w (last: %v)", ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// WaitFormed waits until every node's sidecar answers with a view that
// lists all the group's nodes and the same master, or ctx ends. StartGroup
// returns only once this held; call it again after restarting sidecars to
// wait until they are all back in the view.
func (g *Group) WaitFormed(ctx context.Context) error {
	if g.opts.Group == nil {
		return ErrNoGroup
	}
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		vs, errs := g.views(ctx)
		if formed(g, vs, errs) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testenv: group %s did not form (every view listing all %d nodes, one master): %w; views:%s",
				g.ID, len(g.Nodes), ctx.Err(), describeViews(g, vs, errs))
		case <-tick.C:
		}
	}
}

func formed(g *Group, vs []View, errs []error) bool {
	for i, v := range vs {
		if errs[i] != nil || v.Master == "" || v.Master != vs[0].Master || len(v.Members) != len(g.Nodes) {
			return false
		}
		for _, n := range g.Nodes {
			if !v.Has(n.Member) {
				return false
			}
		}
	}
	return true
}
