package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

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
			SynchronisedSlavePids: []string{}, Policy: "two"},
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
	if code, b := do(t, "GET", srv.URL+"/api/nodes", "", ""); code != http.StatusNotFound || !strings.Contains(b, "no endpoint GET /api/nodes") {
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
