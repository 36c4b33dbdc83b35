package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/mirrorproxy/mirrorproxy/failover/group"
	"github.com/mirrorproxy/mirrorproxy/replicate"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const token = "0123456789abcdef-token"

type fakeNode struct {
	group  replicate.Group
	queues map[string][]string
}

func (n *fakeNode) Group() replicate.Group       { return n.group }
func (n *fakeNode) Queues(vhost string) []string { return n.queues[vhost] }

type fakeCounts map[string]int

func (c fakeCounts) Messages(_ context.Context, vhost, queue string) (int, error) {
	n, ok := c[vhost+"|"+queue]
	if !ok {
		return 0, errors.New("NOT_FOUND - no queue")
	}
	return n, nil
}

type fakeSynced map[string][]string

func (s fakeSynced) Synced(vhost, queue string) []string { return s[vhost+"|"+queue] }

// Syncing: two.x is syncing.
func (s fakeSynced) Syncing(vhost, queue string) bool { return vhost == "/" && queue == "two.x" }

func mustPolicy(t *testing.T, vhost, name, pattern, def string, prio int) replicate.Policy {
	t.Helper()
	d, err := replicate.ParseDefinitionJSON([]byte(def))
	if err != nil {
		t.Fatal(err)
	}
	p, err := replicate.NewPolicy(vhost, name, pattern, replicate.ApplyToQueues, prio, d)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newTestAPI(t *testing.T, tok string) (*httptest.Server, *replicate.Policies) {
	t.Helper()
	ps := &replicate.Policies{}
	for _, p := range []replicate.Policy{
		mustPolicy(t, "/", "ha-all", `^ha\.`, `{"ha-mode":"all"}`, 0),
		mustPolicy(t, "/", "two", `^two\.`, `{"ha-mode":"exactly","ha-params":2}`, 0),
		mustPolicy(t, "/", "ttl-only", `^plain\.`, `{"message-ttl":1000}`, 0),
	} {
		if err := ps.Set(p); err != nil {
			t.Fatal(err)
		}
	}
	node := &fakeNode{
		group: replicate.Group{Master: "a", Members: []replicate.Member{{Node: "a", JoinEpoch: 1}, {Node: "b", JoinEpoch: 2}, {Node: "c", JoinEpoch: 3}}},
		queues: map[string][]string{
			"/":     {"two.x", "ha.q1", "plain.q", "ha.q1", "ha.gone"},
			"other": {"ha.q1"},
		},
	}
	h, err := NewHandler(Config{
		Node: node, Policies: ps, Token: tok, Logger: zerolog.Nop(),
		Messages: fakeCounts{"/|ha.q1": 7, "/|two.x": 0},
		Synced:   fakeSynced{"/|ha.q1": {"c", "z"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, ps
}

func do(t *testing.T, method, url, tok, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestQueues(t *testing.T) {
	srv, _ := newTestAPI(t, token)
	code, body := do(t, "GET", srv.URL+"/api/queues?vhost=/", "", "")
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, body)
	}
	var got []Queue
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	seven, zero := 7, 0
	want := []Queue{
		{Name: "ha.gone", Vhost: "/", Node: "a", SlavePids: []string{"b", "c"}, SynchronisedSlavePids: []string{},
			Policy: "ha-all", Error: "NOT_FOUND - no queue"},
		{Name: "ha.q1", Vhost: "/", Node: "a", Messages: &seven, SlavePids: []string{"b", "c"},
			SynchronisedSlavePids: []string{"c"}, Policy: "ha-all"},
		{Name: "two.x", Vhost: "/", Node: "a", Messages: &zero, SlavePids: []string{"b"},
			SynchronisedSlavePids: []string{}, Policy: "two", Syncing: true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("queues:\n got %s\nwant %+v", body, want)
	}
	// Absent vhost means "/"; a vhost with no mirroring policy lists none.
	if code, b2 := do(t, "GET", srv.URL+"/api/queues", "", ""); code != 200 || b2 != body {
		t.Errorf("no vhost: %d %s", code, b2)
	}
	if code, b2 := do(t, "GET", srv.URL+"/api/queues?vhost=other", "", ""); code != 200 || b2 != "[]\n" {
		t.Errorf("vhost other: %d %q", code, b2)
	}
}

func TestNodes(t *testing.T) {
	srv, _ := newTestAPI(t, token)
	code, body := do(t, "GET", srv.URL+"/api/nodes", "", "")
	want := `[{"name":"a","master":true,"join_epoch":1},{"name":"b","master":false,"join_epoch":2},{"name":"c","master":false,"join_epoch":3}]` + "\n"
	if code != http.StatusOK || body != want {
		t.Fatalf("GET /api/nodes: %d %s, want %s", code, body, want)
	}
	if code, _ := do(t, "POST", srv.URL+"/api/nodes", token, ""); code != http.StatusMethodNotAllowed {
		t.Fatalf("POST /api/nodes: %d", code)
	}
}

func TestPolicyChangesNeedTheToken(t *testing.T) {
	srv, ps := newTestAPI(t, token)
	url := srv.URL + "/api/policies/%2F/new"
	body := `{"pattern":"^new\\.","definition":{"ha-mode":"all"},"priority":3,"apply-to":"queues"}`
	for _, tok := range []string{"", "wrong", token + "x"} {
		if code, b := do(t, "PUT", url, tok, body); code != http.StatusUnauthorized || !strings.Contains(b, "not_authorised") {
			t.Errorf("PUT with token %q: %d %s", tok, code, b)
		}
		if code, _ := do(t, "DELETE", srv.URL+"/api/policies/%2F/ha-all", tok, ""); code != http.StatusUnauthorized {
			t.Errorf("DELETE with token %q: %d", tok, code)
		}
	}
	if _, ok := ps.Get("/", "new"); ok {
		t.Fatal("an unauthorised PUT set the policy")
	}
	if _, ok := ps.Get("/", "ha-all"); !ok {
		t.Fatal("an unauthorised DELETE cleared the policy")
	}
	if code, b := do(t, "PUT", url, token, body); code != http.StatusNoContent {
		t.Fatalf("PUT: %d %s", code, b)
	}
	p, ok := ps.Get("/", "new")
	if !ok || p.Priority != 3 || p.ApplyTo != replicate.ApplyToQueues || p.Pattern.String() != `^new\.` || p.Definition.String() != `{"ha-mode":"all"}` {
		t.Fatalf("set policy = %+v, %v", p, ok)
	}
	if code, b := do(t, "DELETE", srv.URL+"/api/policies/%2F/ha-all", token, ""); code != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", code, b)
	}
	if _, ok := ps.Get("/", "ha-all"); ok {
		t.Fatal("DELETE left the policy")
	}
	if code, b := do(t, "DELETE", srv.URL+"/api/policies/%2F/ha-all", token, ""); code != http.StatusNotFound || !strings.Contains(b, "no such policy") {
		t.Errorf("second DELETE: %d %s", code, b)
	}
}

func TestNoTokenConfiguredRefusesChanges(t *testing.T) {
	srv, _ := newTestAPI(t, "")
	code, b := do(t, "PUT", srv.URL+"/api/policies/%2F/p", "anything", `{"pattern":".","definition":{"ha-mode":"all"}}`)
	if code != http.StatusUnauthorized || !strings.Contains(b, "no admin.token configured") {
		t.Fatalf("PUT: %d %s", code, b)
	}
	// Reads still work.
	if code, _ := do(t, "GET", srv.URL+"/api/policies", "", ""); code != http.StatusOK {
		t.Fatalf("GET policies: %d", code)
	}
}

func TestBadPolicies(t *testing.T) {
	srv, _ := newTestAPI(t, token)
	for _, tc := range []struct{ body, want string }{
		{`{"pattern":"(","definition":{"ha-mode":"all"}}`, "not a valid regular expression"},
		{`{"pattern":".","definition":{"ha-mode":"sometimes"}}`, "ha-mode"},
		{`{"pattern":"."}`, "no definition"},
		{`{"pattern":".","definition":{"ha-mode":"all"},"colour":1}`, "unknown field"},
		{`not json`, "not a policy"},
		{`{"pattern":".","definition":{"ha-mode":"all"},"apply-to":"bindings"}`, "apply-to"},
	} {
		code, b := do(t, "PUT", srv.URL+"/api/policies/%2F/bad", token, tc.body)
		if code != http.StatusBadRequest || !strings.Contains(b, tc.want) {
			t.Errorf("PUT %s: %d %s; want 400 containing %q", tc.body, code, b, tc.want)
		}
	}
}

func TestListPolicies(t *testing.T) {
	srv, ps := newTestAPI(t, token)
	if err := ps.Set(mustPolicy(t, "v2", "other", ".", `{"ha-mode":"all"}`, 1)); err != nil {
		t.Fatal(err)
	}
	var got []replicate.Policy
	for _, tc := range []struct {
		path string
		want []string
	}{
		{"/api/policies?vhost=/", []string{"ha-all", "ttl-only", "two"}},
		{"/api/policies/%2F", []string{"ha-all", "ttl-only", "two"}},
		{"/api/policies/v2", []string{"other"}},
		{"/api/policies", []string{"ha-all", "ttl-only", "two", "other"}},
		{"/api/policies?vhost=none", []string{}},
	} {
		code, body := do(t, "GET", srv.URL+tc.path, "", "")
		if code != 200 {
			t.Fatalf("%s: %d %s", tc.path, code, body)
		}
		got = nil
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("%s: %v in %s", tc.path, err, body)
		}
		names := []string{}
		for _, p := range got {
			names = append(names, p.Name)
		}
		if !reflect.DeepEqual(names, tc.want) {
			t.Errorf("%s: names %v, want %v", tc.path, names, tc.want)
		}
	}
}

func TestUnknownEndpoint(t *testing.T) {
	srv, _ := newTestAPI(t, token)
	if code, b := do(t, "GET", srv.URL+"/api/overview", "", ""); code != http.StatusNotFound || !strings.Contains(b, "no endpoint GET /api/overview") {
		t.Errorf("%d %s", code, b)
	}
	if code, _ := do(t, "POST", srv.URL+"/api/queues", "", ""); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /api/queues: %d", code)
	}
}

func TestServerStartClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHandler(Config{Node: &fakeNode{}, Policies: &replicate.Policies{}, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	s := Start(ln, h, zerolog.Nop())
	code, body := do(t, "GET", "http://"+ln.Addr().String()+"/api/queues", "", "")
	if code != 200 || body != "[]\n" {
		t.Fatalf("%d %q", code, body)
	}
	http.DefaultClient.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Fatal("the listener still accepts after Close")
	}
}

func TestNewHandlerNeedsNodeAndPolicies(t *testing.T) {
	if _, err := NewHandler(Config{Policies: &replicate.Policies{}}); err == nil {
		t.Error("no Node accepted")
	}
	if _, err := NewHandler(Config{Node: &fakeNode{}}); err == nil {
		t.Error("no Policies accepted")
	}
}

// logBuffer collects the handler's log lines; the server's goroutines
// write it while the test reads.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// errNotMaster is the error a group's mirror gives for a master's change.
var errNotMaster = fmt.Errorf("%w: ask the master, %q", group.ErrNotMaster, "node-0")

// fakeChanger records the group-wide changes; err, when set, refuses them.
type fakeChanger struct {
	mu    sync.Mutex
	calls []string
	err   error
}

func (c *fakeChanger) SetPolicy(p replicate.Policy) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, "set "+p.Vhost+" "+p.Name+" "+p.Definition.String())
	return c.err
}

func (c *fakeChanger) ClearPolicy(vhost, name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, "clear "+vhost+" "+name)
	if c.err != nil {
		return c.err
	}
	if name == "gone" {
		return fmt.Errorf("%w: %q in vhost %q", replicate.ErrPolicyNotFound, name, vhost)
	}
	return nil
}

func (c *fakeChanger) taken() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls)
}

func TestGroupWidePolicies(t *testing.T) {
	ps := &replicate.Policies{}
	ch := &fakeChanger{}
	var logs logBuffer
	h, err := NewHandler(Config{Node: &fakeNode{}, Policies: ps, Changer: ch, Token: token, Logger: zerolog.New(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	body := `{"pattern":"^new\\.","definition":{"ha-mode":"all"},"apply-to":"queues"}`

	if code, b := do(t, "PUT", srv.URL+"/api/policies/%2F/new", "", body); code != http.StatusUnauthorized {
		t.Fatalf("PUT without token: %d %s", code, b)
	}
	if code, b := do(t, "PUT", srv.URL+"/api/policies/%2F/bad", token, `{"pattern":"(","definition":{"ha-mode":"all"}}`); code != http.StatusBadRequest {
		t.Fatalf("bad PUT: %d %s", code, b)
	}
	if code, b := do(t, "PUT", srv.URL+"/api/policies/%2F/new", token, body); code != http.StatusNoContent {
		t.Fatalf("PUT: %d %s", code, b)
	}
	if code, b := do(t, "DELETE", srv.URL+"/api/policies/v1/old", token, ""); code != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", code, b)
	}
	if code, b := do(t, "DELETE", srv.URL+"/api/policies/v1/gone", token, ""); code != http.StatusNotFound || !strings.Contains(b, `"error":"not_found"`) || !strings.Contains(b, "no such policy") {
		t.Fatalf("DELETE of a missing policy: %d %s", code, b)
	}
	want := []string{`set / new {"ha-mode":"all"}`, "clear v1 old", "clear v1 gone"}
	if got := ch.taken(); !reflect.DeepEqual(got, want) {
		t.Fatalf("changes %q, want %q (the unauthorised and the invalid one never reach the group)", got, want)
	}
	if len(ps.List("")) != 0 {
		t.Fatalf("the node's own set changed: %v", ps.List(""))
	}
	if l := logs.String(); !strings.Contains(l, "policy set (group-wide)") || !strings.Contains(l, "policy cleared (group-wide)") {
		t.Errorf("log: %s", l)
	}

	// A mirror refuses: 409 with a reason that names the master.
	ch.mu.Lock()
	ch.err = errNotMaster
	ch.mu.Unlock()
	for _, m := range []string{"PUT", "DELETE"} {
		code, b := do(t, m, srv.URL+"/api/policies/%2F/new", token, body)
		var e ErrorBody
		if err := json.Unmarshal([]byte(b), &e); err != nil || code != http.StatusConflict || e.Error != "not_master" ||
			e.Reason != `this node is not the master: ask the master, "node-0"` {
			t.Errorf("%s on a mirror: %d %s", m, code, b)
		}
	}
	ch.mu.Lock()
	ch.err = errors.New("gm: ring closed")
	ch.mu.Unlock()
	if code, b := do(t, "PUT", srv.URL+"/api/policies/%2F/new", token, body); code != http.StatusInternalServerError || !strings.Contains(b, "ring closed") {
		t.Errorf("PUT failing in the group: %d %s", code, b)
	}
}

// fakeSyncer syncs by queue name: "q" syncs at once, "slow" waits for
// release (or its context), "cancelled" loses to cancel_sync; any other
// queue is unknown. notMaster makes it a mirror.
type fakeSyncer struct {
	notMaster bool
	started   chan struct{} // gets a value when "slow" starts waiting
	release   <-chan time.Time
	mu        sync.Mutex
	calls     []string
}

func (s *fakeSyncer) SyncQueue(ctx context.Context, vhost, queue string) error {
	s.mu.Lock()
	s.calls = append(s.calls, "sync "+vhost+" "+queue)
	s.mu.Unlock()
	switch {
	case s.notMaster:
		return errNotMaster
	case queue == "q":
		return nil
	case queue == "cancelled":
		return fmt.Errorf("%w: %q in vhost %q", replicate.ErrSyncCancelled, queue, vhost)
	case queue == "slow":
		if s.started != nil {
			s.started <- struct{}{}
		}
		select {
		case <-s.release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return fmt.Errorf("%w: %q in vhost %q", replicate.ErrUnknownQueue, queue, vhost)
}

func (s *fakeSyncer) CancelSyncQueue(vhost, queue string) error {
	s.mu.Lock()
	s.calls = append(s.calls, "cancel "+vhost+" "+queue)
	s.mu.Unlock()
	switch {
	case s.notMaster:
		return errNotMaster
	case queue == "slow":
		return nil
	case queue == "q":
		return fmt.Errorf("%w: %q in vhost %q", replicate.ErrNotSyncing, queue, vhost)
	}
	return fmt.Errorf("%w: %q in vhost %q", replicate.ErrUnknownQueue, queue, vhost)
}

func (s *fakeSyncer) taken() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

func newSyncAPI(t *testing.T, s Syncer) *httptest.Server {
	t.Helper()
	cfg := Config{Node: &fakeNode{}, Policies: &replicate.Policies{}, Token: token, Logger: zerolog.Nop()}
	if s != nil {
		cfg.Syncer = s
	}
	h, err := NewHandler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func TestQueueActions(t *testing.T) {
	sy := &fakeSyncer{}
	srv := newSyncAPI(t, sy)
	url := func(vhost, q string) string { return srv.URL + "/api/queues/" + vhost + "/" + q + "/actions" }
	sync, cancel := `{"action":"sync"}`, `{"action":"cancel_sync"}`
	for _, tc := range []struct {
		url, tok, body string
		code           int
		want           string // in the body
	}{
		{url("%2F", "q"), "", sync, http.StatusUnauthorized, "not_authorised"},
		{url("%2F", "q"), "wrong", cancel, http.StatusUnauthorized, "not_authorised"},
		{url("%2F", "q"), token, sync, http.StatusNoContent, ""},
		{url("v%2F1", "q"), token, sync, http.StatusNoContent, ""},
		{url("%2F", "nope"), token, sync, http.StatusNotFound, `"reason":"no such mirrored queue: \"nope\" in vhost \"/\""`},
		{url("%2F", "cancelled"), token, sync, http.StatusConflict, `"error":"cancelled"`},
		{url("%2F", "slow"), token, cancel, http.StatusNoContent, ""},
		{url("%2F", "q"), token, cancel, http.StatusConflict, `"error":"not_syncing"`},
		{url("%2F", "nope"), token, cancel, http.StatusNotFound, `"error":"not_found"`},
		{url("%2F", "q"), token, `{"action":"resync"}`, http.StatusBadRequest, `action \"resync\": use sync or cancel_sync`},
		{url("%2F", "q"), token, `{"action":"sync","mode":1}`, http.StatusBadRequest, "unknown field"},
		{url("%2F", "q"), token, ``, http.StatusBadRequest, "the body is not"},
		{srv.URL + "/api/queues/%2F/q/state", token, sync, http.StatusNotFound, "no endpoint"},
	} {
		code, b := do(t, "POST", tc.url, tc.tok, tc.body)
		if code != tc.code || !strings.Contains(b, tc.want) {
			t.Errorf("POST %s %s (token %q): %d %s; want %d with %s", tc.url, tc.body, tc.tok, code, b, tc.code, tc.want)
		}
	}
	want := []string{"sync / q", "sync v/1 q", "sync / nope", "sync / cancelled", "cancel / slow", "cancel / q", "cancel / nope"}
	if got := sy.taken(); !reflect.DeepEqual(got, want) {
		t.Errorf("calls %q, want %q", got, want)
	}
	if code, _ := do(t, "GET", url("%2F", "q"), token, ""); code != http.StatusMethodNotAllowed {
		t.Errorf("GET actions: %d", code)
	}

	// A mirror: 409 naming the master, for both actions.
	mirror := newSyncAPI(t, &fakeSyncer{notMaster: true})
	for _, body := range []string{sync, cancel} {
		code, b := do(t, "POST", mirror.URL+"/api/queues/%2F/q/actions", token, body)
		if code != http.StatusConflict || !strings.Contains(b, `"reason":"this node is not the master: ask the master, \"node-0\""`) {
			t.Errorf("%s on a mirror: %d %s", body, code, b)
		}
	}
	// No Syncer: 501.
	none := newSyncAPI(t, nil)
	if code, b := do(t, "POST", none.URL+"/api/queues/%2F/q/actions", token, sync); code != http.StatusNotImplemented {
		t.Errorf("no syncer: %d %s", code, b)
	}
}

// TestSyncOutlastsServerTimeouts runs a sync that takes longer than the
// server's read and write timeouts: the request still gets its 204.
func TestSyncOutlastsServerTimeouts(t *testing.T) {
	h, err := NewHandler(Config{Node: &fakeNode{}, Policies: &replicate.Policies{}, Token: token, Logger: zerolog.Nop(),
		Syncer: &fakeSyncer{release: time.After(time.Second)}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ReadTimeout, srv.Config.WriteTimeout = 100*time.Millisecond, 100*time.Millisecond
	srv.Start()
	defer srv.Close()
	if code, b := do(t, "POST", srv.URL+"/api/queues/%2F/slow/actions", token, `{"action":"sync"}`); code != http.StatusNoContent {
		t.Fatalf("a sync longer than the server's timeouts: %d %s", code, b)
	}
}

// TestCloseEndsSyncWait closes the server while a sync request waits: the
// request is answered 503 at once and Close returns without its deadline.
func TestCloseEndsSyncWait(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sy := &fakeSyncer{started: make(chan struct{}, 1)}
	h, err := NewHandler(Config{Node: &fakeNode{}, Policies: &replicate.Policies{}, Token: token, Logger: zerolog.Nop(), Syncer: sy})
	if err != nil {
		t.Fatal(err)
	}
	s := Start(ln, h, zerolog.Nop())
	type answer struct {
		code int
		body string
	}
	got := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, "http://"+ln.Addr().String()+"/api/queues/%2F/slow/actions", strings.NewReader(`{"action":"sync"}`))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			got <- answer{0, err.Error()}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- answer{resp.StatusCode, string(b)}
	}()
	select {
	case <-sy.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the sync request never reached the syncer")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Close waited for its deadline")
	}
	a := <-got
	if a.code != http.StatusServiceUnavailable || !strings.Contains(a.body, "the sync goes on") {
		t.Fatalf("the waiting sync request got %d %s", a.code, a.body)
	}
	http.DefaultClient.CloseIdleConnections()
}
