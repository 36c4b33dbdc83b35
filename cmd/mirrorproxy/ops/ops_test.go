package ops

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/failover"
	"github.com/mirrorproxy/mirrorproxy/failover/group"
	"github.com/mirrorproxy/mirrorproxy/gm"
	"github.com/mirrorproxy/mirrorproxy/proxy"
)

// scrape parses the collector's metrics as Prometheus would read them.
func scrape(t *testing.T, c prometheus.Collector) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// value returns the sample of family name whose labels include want.
func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string, want ...string) (float64, bool) {
	t.Helper()
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(want); i += 2 {
			if labels[want[i]] != want[i+1] {
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

func mustValue(t *testing.T, mfs map[string]*dto.MetricFamily, want float64, name string, labels ...string) {
	t.Helper()
	got, ok := value(t, mfs, name, labels...)
	if !ok {
		t.Errorf("%s%v: missing", name, labels)
		return
	}
	if got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// TestCollectorFront: a plain sidecar's front counters become the
// sessions, traffic and bad-input metrics, by origin and direction.
func TestCollectorFront(t *testing.T) {
	st := proxy.Stats{
		ClientsOpen: 2, ClientsTotal: 5, LegsOpen: 1, LegsTotal: 3,
		ClientTraffic: proxy.Traffic{FramesFromClient: 10, BytesFromClient: 1000, FramesToClient: 20, BytesToClient: 2000},
		LegTraffic:    proxy.Traffic{FramesFromClient: 1, BytesFromClient: 100, FramesToClient: 2, BytesToClient: 200},
		BadInput:      map[string]uint64{"501": 2, proxy.BadInputProtocolHeader: 1},
		Moved:         4, Cancels: 1, Resent: 7, Deduplicated: 5, ConfirmsWithheld: 3,
	}
	c := collector{version: "v9", front: func() (proxy.Stats, bool) { return st, true }}
	mfs := scrape(t, c)
	mustValue(t, mfs, 1, "mirrorproxy_build_info", "version", "v9", "grouped", "false")
	mustValue(t, mfs, 2, "mirrorproxy_client_sessions", "origin", "client")
	mustValue(t, mfs, 1, "mirrorproxy_client_sessions", "origin", "peer")
	mustValue(t, mfs, 5, "mirrorproxy_client_sessions_opened_total", "origin", "client")
	mustValue(t, mfs, 3, "mirrorproxy_client_sessions_opened_total", "origin", "peer")
	mustValue(t, mfs, 10, "mirrorproxy_frames_total", "origin", "client", "direction", "from_client")
	mustValue(t, mfs, 20, "mirrorproxy_frames_total", "origin", "client", "direction", "to_client")
	mustValue(t, mfs, 2000, "mirrorproxy_bytes_total", "origin", "client", "direction", "to_client")
	mustValue(t, mfs, 100, "mirrorproxy_bytes_total", "origin", "peer", "direction", "from_client")
	mustValue(t, mfs, 2, "mirrorproxy_client_sessions_closed_bad_input_total", "code", "501")
	mustValue(t, mfs, 1, "mirrorproxy_client_sessions_closed_bad_input_total", "code", "protocol_header")
	mustValue(t, mfs, 4, "mirrorproxy_sessions_moved_total")
	mustValue(t, mfs, 1, "mirrorproxy_consumer_cancels_sent_total")
	mustValue(t, mfs, 7, "mirrorproxy_publishes_resent_total")
	mustValue(t, mfs, 5, "mirrorproxy_publishes_deduplicated_total")
	mustValue(t, mfs, 3, "mirrorproxy_confirms_withheld")
	if _, ok := mfs["mirrorproxy_view_epoch"]; ok {
		t.Error("a plain sidecar reports a view epoch")
	}
}

// TestCollectorGroupNode: a master's state becomes the ring, view, raft,
// queue and failover metrics.
func TestCollectorGroupNode(t *testing.T) {
	held := 7
	hist := gm.Histogram{Counts: make([]uint64, len(gm.LatencyBuckets)+1), Sum: 0.5, Count: 4}
	hist.Counts[2], hist.Counts[len(gm.LatencyBuckets)] = 3, 1
	st := group.Status{
		Node: "node-0", Role: "master", Serving: true, Broker: "ok", Epoch: 5, Master: "node-0",
		Members: []group.MemberStatus{
			{ID: "node-0", Role: "master", Self: true},
			{ID: "node-1", Role: "mirror", HeardAgo: 0.1, LagOps: 0},
			{ID: "node-2", Role: "mirror", HeardAgo: 0.2, LagOps: 12, LagSeconds: 1.5},
		},
		Queues: []group.QueueStatus{{Vhost: "/", Name: "ha.q", Master: "node-0", Mirrors: []string{"node-1", "node-2"},
			Synced: []string{"node-1"}, Syncing: true, SyncProgress: 0.25, SyncCopied: 10, Held: &held}},
		Raft:       failover.RaftStatus{State: "Leader", Leader: "node-0", Term: 3, LeaseHeld: true},
		RingStats:  gm.Stats{Epoch: 5, Member: true, Proposed: 100, Stable: 88, Window: 4096, InFlight: 12, Held: 12, Latency: hist},
		Promotions: 1, MasterChanges: 2, Fences: 0, MasterlessSeconds: 2.5, MasterUnsynced: []string{"/\x00ha.x"},
		Front: proxy.Stats{ClientsOpen: 1, ClientsTotal: 1},
	}
	c := collector{version: "dev",
		node:  func(context.Context) (group.Status, error) { return st, nil },
		front: func() (proxy.Stats, bool) { return st.Front, true },
		messages: func(_ context.Context, qs []QueueRef) map[QueueRef]int {
			if len(qs) != 1 || qs[0] != (QueueRef{"/", "ha.q"}) {
				t.Errorf("messages asked for %v, want the one mirrored queue", qs)
			}
			return map[QueueRef]int{{"/", "ha.q"}: 42}
		}}
	mfs := scrape(t, c)
	mustValue(t, mfs, 1, "mirrorproxy_build_info", "grouped", "true")
	mustValue(t, mfs, 1, "mirrorproxy_client_sessions", "origin", "client")
	mustValue(t, mfs, 100, "mirrorproxy_ring_ops_proposed_total")
	mustValue(t, mfs, 88, "mirrorproxy_ring_ops_stable_total")
	mustValue(t, mfs, 12, "mirrorproxy_ring_window_ops")
	mustValue(t, mfs, 4096, "mirrorproxy_ring_window_size_ops")
	mustValue(t, mfs, 4, "mirrorproxy_ring_propose_to_stable_seconds")
	h := mfs["mirrorproxy_ring_propose_to_stable_seconds"].GetMetric()[0].GetHistogram()
	if b := h.GetBucket(); len(b) != len(gm.LatencyBuckets) || b[1].GetCumulativeCount() != 0 || b[2].GetCumulativeCount() != 3 || b[len(b)-1].GetCumulativeCount() != 3 || h.GetSampleSum() != 0.5 {
		t.Errorf("latency histogram = %v", h)
	}
	mustValue(t, mfs, 12, "mirrorproxy_member_lag_ops", "member", "node-2")
	mustValue(t, mfs, 1.5, "mirrorproxy_member_lag_seconds", "member", "node-2")
	mustValue(t, mfs, 0.2, "mirrorproxy_member_last_heard_seconds", "member", "node-2")
	mustValue(t, mfs, 42, "mirrorproxy_queue_messages", "queue", "ha.q")
	mustValue(t, mfs, 2, "mirrorproxy_queue_mirrors", "vhost", "/", "queue", "ha.q")
	mustValue(t, mfs, 1, "mirrorproxy_queue_mirror_synced", "queue", "ha.q", "mirror", "node-1")
	mustValue(t, mfs, 0, "mirrorproxy_queue_mirror_synced", "queue", "ha.q", "mirror", "node-2")
	mustValue(t, mfs, 12, "mirrorproxy_queue_mirror_lag_ops", "queue", "ha.q", "mirror", "node-2")
	mustValue(t, mfs, 1, "mirrorproxy_queue_syncing", "queue", "ha.q")
	mustValue(t, mfs, 0.25, "mirrorproxy_queue_sync_progress_ratio", "queue", "ha.q")
	mustValue(t, mfs, 10, "mirrorproxy_queue_sync_messages_copied", "queue", "ha.q")
	mustValue(t, mfs, 7, "mirrorproxy_queue_mirror_messages", "queue", "ha.q", "mirror", "node-0")
	mustValue(t, mfs, 5, "mirrorproxy_view_epoch")
	mustValue(t, mfs, 3, "mirrorproxy_view_members")
	mustValue(t, mfs, 1, "mirrorproxy_view_master_unsynced_queues")
	mustValue(t, mfs, 1, "mirrorproxy_view_master", "master", "node-0")
	mustValue(t, mfs, 1, "mirrorproxy_role", "role", "master")
	mustValue(t, mfs, 0, "mirrorproxy_role", "role", "mirror")
	mustValue(t, mfs, 1, "mirrorproxy_serving")
	mustValue(t, mfs, 1, "mirrorproxy_broker_up")
	mustValue(t, mfs, 1, "mirrorproxy_raft_leader", "leader", "node-0")
	mustValue(t, mfs, 1, "mirrorproxy_raft_is_leader")
	mustValue(t, mfs, 3, "mirrorproxy_raft_term")
	mustValue(t, mfs, 1, "mirrorproxy_promotions_total")
	mustValue(t, mfs, 2, "mirrorproxy_view_master_changes_total")
	mustValue(t, mfs, 2.5, "mirrorproxy_masterless_seconds_total")
	mustValue(t, mfs, 0, "mirrorproxy_masterless_seconds")

	// A mirror reports no lags or sync (the master's), and nothing it
	// cannot know; a node whose ring does not answer still serves its
	// front's metrics.
	st.Serving, st.Role, st.Master = false, "mirror", "node-1"
	mfs = scrape(t, c)
	for _, name := range []string{"mirrorproxy_member_lag_ops", "mirrorproxy_queue_mirror_lag_ops", "mirrorproxy_queue_syncing", "mirrorproxy_queue_messages"} {
		if _, ok := mfs[name]; ok {
			t.Errorf("a mirror reports %s", name)
		}
	}
	mustValue(t, mfs, 1, "mirrorproxy_role", "role", "mirror")
	c.node = func(context.Context) (group.Status, error) { return group.Status{}, errors.New("wedged") }
	c.log = zerolog.Nop()
	mfs = scrape(t, c)
	mustValue(t, mfs, 1, "mirrorproxy_client_sessions", "origin", "client")
	if _, ok := mfs["mirrorproxy_view_epoch"]; ok {
		t.Error("a node whose status failed reports a view epoch")
	}
}

// TestMetricsDocumented: every metric is in docs/METRICS.md with its type.
func TestMetricsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/METRICS.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	for _, d := range allDescs {
		m := re.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("no name in %s", d)
		}
		if !strings.Contains(string(doc), "`"+m[1]+"`") {
			t.Errorf("%s is not in docs/METRICS.md", m[1])
		}
	}
}

// TestPlainSidecarEndpoints: a plain sidecar serves /metrics in the text
// format with its front's counters, /healthz, and /readyz following its
// broker; other paths are 404 with a reason; changes are refused.
func TestPlainSidecarEndpoints(t *testing.T) {
	broker, err := net.Listen("tcp", "127.0.0.1:0") // a broker that accepts TCP
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := broker.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	srv, err := proxy.NewServer(proxy.Options{Upstream: broker.Addr().String(), Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	cln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(cln) }()
	defer func() { srv.Close(); <-served }() //nolint:errcheck // the served error is ErrServerClosed, not under test here
	// Not AMQP: counted as bad input before the broker is dialled.
	c, err := net.Dial("tcp", cln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	_, _ = io.ReadAll(c)
	c.Close()

	h := NewHandler(Config{Front: srv, Upstream: broker.Addr().String(), Version: "test", Logger: zerolog.Nop()}, nil)
	ts := httptest.NewServer(h)
	defer ts.Close()
	get := func(path string, hdr ...string) (int, string, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, ts.URL+path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, body, hdr := get("/metrics")
		if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain") {
			t.Fatalf("/metrics: %d %s", code, hdr.Get("Content-Type"))
		}
		p := expfmt.NewTextParser(model.UTF8Validation)
		mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
		if err != nil {
			t.Fatalf("/metrics is not the text format: %v", err)
		}
		if mfs["go_goroutines"] == nil || mfs["process_start_time_seconds"] == nil {
			t.Error("/metrics lacks the Go and process collectors")
		}
		if v, ok := value(t, mfs, "mirrorproxy_client_sessions_closed_bad_input_total", "code", "protocol_header"); ok && v == 1 {
			mustValue(t, mfs, 1, "mirrorproxy_client_sessions_opened_total", "origin", "client")
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no bad-input count for the HTTP client:\n%s", body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code, body, _ := get("/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body, _ := get("/readyz"); code != 200 || body != "ok\n" {
		t.Errorf("/readyz with the broker up = %d %q", code, body)
	}
	if code, body, _ := get("/nope"); code != 404 || !strings.Contains(body, "plain sidecar") {
		t.Errorf("/nope = %d %q", code, body)
	}
	resp, err := http.Post(ts.URL+"/readyz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /readyz = %d, want 405", resp.StatusCode)
	}
	// The broker goes away: not ready, saying why (once the cached
	// verdict is older than its bound).
	broker.Close()
	h.upMu.Lock()
	h.upAt = time.Time{}
	h.upMu.Unlock()
	code, body, _ := get("/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "does not answer") {
		t.Errorf("/readyz with the broker gone = %d %q", code, body)
	}
	code, body, _ = get("/readyz", "Accept", "application/json")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `"ok":false`) || !strings.Contains(body, `"reasons":["the broker`) {
		t.Errorf("/readyz as JSON = %d %q", code, body)
	}
	if code, body, _ := get("/"); code != 200 || !strings.Contains(body, "<html") {
		t.Errorf("/ = %d, %.80q", code, body)
	}
	if code, body, _ := get("/api/status"); code != 200 || !strings.Contains(body, `"grouped":false`) || !strings.Contains(body, `"sessions_total":1`) {
		t.Errorf("/api/status = %d %q", code, body)
	}
}

// TestDashboardUsesOurMetrics: every mirrorproxy_ metric the Grafana
// dashboard queries is one the sidecar serves, and it queries each family.
func TestDashboardUsesOurMetrics(t *testing.T) {
	b, err := os.ReadFile("../../../docs/grafana/mirrorproxy.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	served := map[string]bool{}
	re := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	for _, d := range allDescs {
		served[re.FindStringSubmatch(d.String())[1]] = true
	}
	used := map[string]bool{}
	name := regexp.MustCompile(`mirrorproxy_[a-z_]+`)
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range name.FindAllString(tg.Expr, -1) {
				m = strings.TrimSuffix(m, "_bucket")
				if !served[m] {
					t.Errorf("panel %q queries %s, which the sidecar does not serve", p.Title, m)
				}
				used[m] = true
			}
		}
	}
	for m := range served {
		if !used[m] && m != "mirrorproxy_build_info" {
			t.Errorf("no panel shows %s", m)
		}
	}
}
