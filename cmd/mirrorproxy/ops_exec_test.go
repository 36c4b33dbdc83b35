package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mirrorproxy/mirrorproxy/testenv"
)

// metricsOf scrapes a sidecar's /metrics and parses the text format.
func metricsOf(t *testing.T, adminURL string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := httpGet(t, adminURL+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("%s/metrics: %d %s", adminURL, code, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("%s/metrics is not the text format: %v", adminURL, err)
	}
	return mfs
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// sample is the value of the family's sample whose labels include the
// name/value pairs given (a histogram's sample count); ok false if none.
func sample(mfs map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// expectation is one check of a scrape: the sample, and a test of its value.
type expectation struct {
	name   string
	labels []string
	ok     func(float64) bool
	want   string
}

func eq(v float64) func(float64) bool      { return func(x float64) bool { return x == v } }
func atLeast(v float64) func(float64) bool { return func(x float64) bool { return x >= v } }

// waitMetrics scrapes until every expectation holds, or fails after within
// naming the ones that do not.
func waitMetrics(t *testing.T, who, adminURL string, within time.Duration, exps []expectation) map[string]*dto.MetricFamily {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		mfs := metricsOf(t, adminURL)
		var bad []string
		for _, e := range exps {
			v, found := sample(mfs, e.name, e.labels...)
			if !found || !e.ok(v) {
				bad = append(bad, fmt.Sprintf("%s%v = %v (found %v), want %s", e.name, e.labels, v, found, e.want))
			}
		}
		if len(bad) == 0 {
			return mfs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's /metrics after %v:\n  %s", who, within, strings.Join(bad, "\n  "))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitStatus polls a probe until it answers code, and returns its body.
func waitStatus(t *testing.T, url string, code int, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got, body := httpGet(t, url)
		if got == code {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s answered %d %q for %v, want %d", url, got, body, within, code)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestOpsOnAGroup: on a real 3-node group of sidecar binaries, a client
// publishes through a mirror's sidecar; /metrics on each node shows the
// session where it is, the ring's ops, the view, each role and the
// queue's synced mirrors and copies; the probes answer, and /readyz of a
// node flips to not ready while its broker is stopped and back when it
// returns; the status page renders every member and the queue in
// headless Chromium.
func TestOpsOnAGroup(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a group of brokers and sidecars")
	}
	g := testenv.Start(t, testenv.Options{Nodes: 3, Sidecar: &testenv.SidecarOptions{}, Group: &testenv.GroupOptions{
		Policies:     []testenv.Policy{{Name: "ha-all", Pattern: `^ha\.`, ApplyTo: "queues", Definition: map[string]any{"ha-mode": "all"}}},
		MoveSessions: true, // the handover at the end moves the client's session
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	master, err := g.WaitMaster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if master != g.Nodes[0] {
		t.Fatalf("master %s, want node-0 (the first peer)", master.Member)
	}
	front := g.Nodes[1] // a mirror: its sidecar carries the session to the master

	conn, err := amqp.Dial(front.SidecarURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("ha.metrics", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	// A consumer that asks to be told of failovers, on a queue of its own.
	cch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cch.QueueDeclare("ha.cancel", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	cancelled := cch.NotifyCancel(make(chan string, 1))
	if _, err := cch.Consume("ha.cancel", "canceller", false, false, false, false, amqp.Table{"x-cancel-on-ha-failover": true}); err != nil {
		t.Fatal(err)
	}
	const msgs = 20
	for i := range msgs {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", "ha.metrics", true, false,
			amqp.Publishing{Body: fmt.Appendf(nil, "m%d", i), DeliveryMode: amqp.Persistent})
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := dc.WaitContext(ctx); !ok || err != nil {
			t.Fatalf("publish %d not confirmed: %v %v", i, ok, err)
		}
	}

	// Every node: the same view and master, its own role.
	q := []string{"vhost", "/", "queue", "ha.metrics"}
	common := func(role string) []expectation {
		return []expectation{
			{"mirrorproxy_view_members", nil, eq(3), "3"},
			{"mirrorproxy_view_epoch", nil, atLeast(3), ">= 3 (three joins)"},
			{"mirrorproxy_view_master", []string{"master", "node-0"}, eq(1), "1"},
			{"mirrorproxy_role", []string{"role", role}, eq(1), "1"},
			{"mirrorproxy_broker_up", nil, eq(1), "1"},
			{"mirrorproxy_raft_term", nil, atLeast(1), ">= 1"},
			{"mirrorproxy_build_info", []string{"grouped", "true"}, eq(1), "1"},
			{"mirrorproxy_queue_mirrors", q, eq(2), "2"},
			{"mirrorproxy_queue_mirror_synced", append(q, "mirror", "node-1"), eq(1), "1 (synced since the declare)"},
			{"mirrorproxy_queue_mirror_synced", append(q, "mirror", "node-2"), eq(1), "1"},
		}
	}
	// The master: the session arrives from node-1's front over the peer
	// link; every publish is an op, stable, timed.
	m0 := waitMetrics(t, "node-0", g.Nodes[0].AdminURL, time.Minute, append(common("master"),
		expectation{"mirrorproxy_serving", nil, eq(1), "1"},
		expectation{"mirrorproxy_client_sessions", []string{"origin", "peer"}, eq(1), "1"},
		expectation{"mirrorproxy_client_sessions", []string{"origin", "client"}, eq(0), "0"},
		expectation{"mirrorproxy_frames_total", []string{"origin", "peer", "direction", "from_client"}, atLeast(3 * msgs), ">= 3 per publish"},
		expectation{"mirrorproxy_ring_ops_proposed_total", nil, atLeast(msgs + 1), "> publishes (the declare too)"},
		expectation{"mirrorproxy_ring_ops_stable_total", nil, atLeast(msgs + 1), "> publishes"},
		expectation{"mirrorproxy_ring_propose_to_stable_seconds", nil, atLeast(msgs + 1), "a sample per stable op"},
		expectation{"mirrorproxy_ring_window_size_ops", nil, eq(4096), "4096"},
		expectation{"mirrorproxy_member_lag_ops", []string{"member", "node-1"}, eq(0), "0 (everything confirmed)"},
		expectation{"mirrorproxy_queue_messages", q, eq(msgs), fmt.Sprint(msgs)},
		expectation{"mirrorproxy_queue_syncing", q, eq(0), "0"},
		expectation{"mirrorproxy_confirms_withheld", nil, eq(0), "0 (every confirm went out)"},
		expectation{"mirrorproxy_promotions_total", nil, eq(1), "1 (the bootstrap)"},
	))
	if p, s := m0["mirrorproxy_ring_ops_proposed_total"], m0["mirrorproxy_ring_ops_stable_total"]; p.GetMetric()[0].GetCounter().GetValue() < s.GetMetric()[0].GetCounter().GetValue() {
		t.Errorf("more ops stable than proposed on the master")
	}
	// The front: the client's session, its frames and bytes both ways.
	waitMetrics(t, "node-1", front.AdminURL, time.Minute, append(common("mirror"),
		expectation{"mirrorproxy_serving", nil, eq(0), "0"},
		expectation{"mirrorproxy_client_sessions", []string{"origin", "client"}, eq(1), "1"},
		expectation{"mirrorproxy_client_sessions_opened_total", []string{"origin", "client"}, atLeast(1), ">= 1"},
		expectation{"mirrorproxy_frames_total", []string{"origin", "client", "direction", "from_client"}, atLeast(3 * msgs), ">= 3 per publish"},
		expectation{"mirrorproxy_frames_total", []string{"origin", "client", "direction", "to_client"}, atLeast(msgs), ">= a confirm per publish"},
		expectation{"mirrorproxy_bytes_total", []string{"origin", "client", "direction", "from_client"}, atLeast(3 * msgs * 8), ">= 8 bytes a frame"},
		expectation{"mirrorproxy_queue_mirror_messages", append(q, "mirror", "node-1"), eq(msgs), fmt.Sprint(msgs, " copies held")},
		expectation{"mirrorproxy_raft_leader", nil, eq(1), "a leader known"},
	))
	waitMetrics(t, "node-2", g.Nodes[2].AdminURL, time.Minute, append(common("mirror"),
		expectation{"mirrorproxy_client_sessions", []string{"origin", "client"}, eq(0), "0"},
		expectation{"mirrorproxy_queue_mirror_messages", append(q, "mirror", "node-2"), eq(msgs), fmt.Sprint(msgs, " copies held")},
	))

	for _, n := range g.Nodes {
		if code, body := httpGet(t, n.AdminURL+"/healthz"); code != 200 || body != "ok\n" {
			t.Errorf("%s /healthz = %d %q", n.Member, code, body)
		}
		waitStatus(t, n.AdminURL+"/readyz", 200, 30*time.Second)
	}

	t.Run("status page in chromium", func(t *testing.T) { statusPageInChromium(t, g) })

	// node-2's broker stops: node-2 is not ready, says why; the others
	// stay ready; when the broker is back, node-2 is ready again.
	n2 := g.Nodes[2]
	if err := n2.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	body := waitStatus(t, n2.AdminURL+"/readyz", http.StatusServiceUnavailable, 30*time.Second)
	if !strings.Contains(body, "the local broker is down") {
		t.Errorf("node-2's /readyz with its broker stopped: %q, want the reason", body)
	}
	if code, body := httpGet(t, n2.AdminURL+"/healthz"); code != 200 {
		t.Errorf("node-2 /healthz with its broker stopped = %d %q: the process is alive, only not ready", code, body)
	}
	code, out, _ := runCLI("ctl", "--admin", n2.AdminAddr, "status")
	if code != 1 || !strings.Contains(out, "ready      no: the local broker is down") {
		t.Errorf("ctl status on node-2 with its broker stopped: exit %d\n%s", code, out)
	}
	for _, n := range g.Nodes[:2] {
		if code, body := httpGet(t, n.AdminURL+"/readyz"); code != 200 {
			t.Errorf("%s /readyz while node-2's broker is stopped = %d %q", n.Member, code, body)
		}
	}
	if err := n2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, n2.AdminURL+"/readyz", 200, 90*time.Second)
	code, out, _ = runCLI("ctl", "--admin", n2.AdminAddr, "status")
	if code != 0 || !strings.Contains(out, "ready      yes") || !strings.Contains(out, "node-2 (mirror)") {
		t.Errorf("ctl status on node-2 back: exit %d\n%s", code, out)
	}
	// The master saw node-2 leave, then come back.
	_, body = httpGet(t, g.Nodes[0].AdminURL+"/api/events")
	var events []struct{ Kind, Text string }
	if err := json.Unmarshal([]byte(body), &events); err != nil {
		t.Fatalf("/api/events: %v: %q", err, body)
	}
	left, back := -1, -1
	for i, e := range events {
		switch {
		case e.Kind == "view" && strings.Contains(e.Text, "left node-2"):
			left = i
		case e.Kind == "view" && strings.Contains(e.Text, "joined node-2") && left >= 0:
			back = i
		}
	}
	if left < 0 || back < left {
		t.Errorf("node-0's events do not show node-2 leaving, then joining again:\n%s", body)
	}

	// A handover (ctl transfer_master node-1): the failover metrics move.
	// The client's session on node-1's front moves from the peer link to
	// node-1's own core, its x-cancel-on-ha-failover consumer is told.
	code, out, errs := runCLI("ctl", "--admin", g.Nodes[0].AdminAddr, "--token", g.AdminToken, "transfer_master", "node-1")
	if code != 0 {
		t.Fatalf("ctl transfer_master node-1: exit %d\n%s%s", code, out, errs)
	}
	waitMetrics(t, "node-1 after the handover", front.AdminURL, time.Minute, []expectation{
		{"mirrorproxy_role", []string{"role", "master"}, eq(1), "1"},
		{"mirrorproxy_serving", nil, eq(1), "1"},
		{"mirrorproxy_view_master", []string{"master", "node-1"}, eq(1), "1"},
		{"mirrorproxy_promotions_total", nil, eq(1), "1"},
		{"mirrorproxy_view_master_changes_total", nil, eq(1), "1 (node-0 → node-1)"},
		{"mirrorproxy_sessions_moved_total", nil, atLeast(1), ">= 1 (the client's session)"},
		{"mirrorproxy_consumer_cancels_sent_total", nil, eq(1), "1 (the canceller)"},
		{"mirrorproxy_masterless_seconds", nil, eq(0), "0"},
	})
	waitMetrics(t, "node-0 after the handover", g.Nodes[0].AdminURL, time.Minute, []expectation{
		{"mirrorproxy_role", []string{"role", "mirror"}, eq(1), "1"},
		{"mirrorproxy_serving", nil, eq(0), "0"},
		{"mirrorproxy_view_master_changes_total", nil, eq(1), "1"},
	})
	select {
	case tag := <-cancelled:
		if tag != "canceller" {
			t.Errorf("basic.cancel for %q, want canceller", tag)
		}
	case <-time.After(30 * time.Second):
		t.Error("the x-cancel-on-ha-failover consumer got no basic.cancel")
	}
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", "ha.metrics", true, false, amqp.Publishing{Body: []byte("after")})
	if err != nil {
		t.Fatalf("publish after the handover on the moved session: %v", err)
	}
	if ok, err := dc.WaitContext(ctx); !ok || err != nil {
		t.Fatalf("publish after the handover not confirmed: %v %v", ok, err)
	}
	_, body = httpGet(t, front.AdminURL+"/api/events")
	if !strings.Contains(body, "master node-0 → node-1") {
		t.Errorf("node-1's events lack the handover:\n%s", body)
	}
}

// statusPageInChromium loads node-0's status page in headless Chromium,
// lets its script run, and checks the rendered DOM: every member and the
// mirrored queue. Skipped where Chromium is not installed.
func statusPageInChromium(t *testing.T, g *testenv.Group) {
	bin := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			bin = p
			break
		}
	}
	if bin == "" {
		t.Skip("no chromium on PATH (Debian: apt-get install chromium); the status page is not checked in a browser")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	profile := t.TempDir()
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--user-data-dir="+filepath.Join(profile, "p"), "--virtual-time-budget=10000",
		"--window-size=390,844", "--dump-dom", g.Nodes[0].AdminURL+"/")
	cmd.Env = append(os.Environ(), "HOME="+profile)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	dom, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.String())
	}
	page := string(dom)
	if !strings.Contains(page, `data-loaded="true"`) {
		t.Fatalf("the page's script did not render the status:\n%s", page)
	}
	for _, n := range g.Nodes {
		if !strings.Contains(page, `data-member="`+n.Member+`"`) {
			t.Errorf("the page lacks member %s", n.Member)
		}
	}
	if !strings.Contains(page, `data-queue="ha.metrics"`) {
		t.Errorf("the page lacks the mirrored queue ha.metrics")
	}
	if !strings.Contains(page, "node-1, node-2") {
		t.Errorf("the page does not list the queue's mirrors node-1, node-2")
	}
	if t.Failed() {
		t.Logf("rendered DOM:\n%s", page)
	}
}

// TestExecPlainSidecarAdmin: `run --admin ADDR` gives a plain sidecar (no
// group) /metrics, /healthz and /readyz; with its broker unreachable it is
// alive but not ready, says why, and counts the client it refused.
func TestExecPlainSidecarAdmin(t *testing.T) {
	listen, adminAddr, deadBroker := freeAddr(t), freeAddr(t), freeAddr(t)
	cmd, lines, exited := startBinary(t, "run", "--listen", listen, "--upstream", deadBroker, "--admin", adminAddr, "--log-format", "json")
	base := "http://" + adminAddr
	deadline := time.Now().Add(20 * time.Second)
	for {
		c := http.Client{Timeout: time.Second}
		if resp, err := c.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the plain sidecar's admin listener did not answer within 20s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, body := httpGet(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	code, body := httpGet(t, base+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "the broker "+deadBroker+" does not answer") {
		t.Errorf("/readyz with no broker = %d %q", code, body)
	}
	if _, err := amqp.Dial("amqp://guest:guest@" + listen + "/"); err == nil {
		t.Fatal("a client got through to a broker that does not exist")
	}
	waitMetrics(t, "the plain sidecar", base, 10*time.Second, []expectation{
		{"mirrorproxy_build_info", []string{"grouped", "false"}, eq(1), "1"},
		{"mirrorproxy_client_sessions_opened_total", []string{"origin", "client"}, eq(1), "1 (the refused client)"},
		{"mirrorproxy_client_sessions", []string{"origin", "client"}, eq(0), "0"},
	})
	if mfs := metricsOf(t, base); mfs["mirrorproxy_view_epoch"] != nil {
		t.Error("a plain sidecar reports a view")
	}
	code, out, _ := runCLI("ctl", "--admin", adminAddr, "status")
	if code != 1 || !strings.Contains(out, "plain sidecar (no group)") || !strings.Contains(out, "ready      no: the broker") {
		t.Errorf("ctl status of the plain sidecar: exit %d\n%s", code, out)
	}
	stopBinary(t, cmd, lines, exited, nil, 10*time.Second)
}
