package admin

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/replicate"
)

// Node is the running node the API reads. Its methods are called
// concurrently, from the HTTP server's goroutines.
type Node interface {
	// Group is the current view as placement sees it.
	Group() replicate.Group
	// Queues names the queues of vhost this node knows of; the API shows
	// those a policy mirrors.
	Queues(vhost string) []string
}

// MessageCounter counts a queue's messages on the master's broker.
type MessageCounter interface {
	Messages(ctx context.Context, vhost, queue string) (int, error)
}

// SyncReporter tells which mirrors of a queue are synced.
type SyncReporter interface {
	Synced(vhost, queue string) []string
}

// Config configures the API handler.
type Config struct {
	// Node is the running node; required.
	Node Node
	// Policies is the node's policy set, read and changed in place;
	// required.
	Policies *replicate.Policies
	// Messages counts messages; nil leaves "messages" out of the status.
	Messages MessageCounter
	// Synced reports synced mirrors; nil reports none (no signal yet).
	Synced SyncReporter
	// Token authorises changes; empty refuses every change.
	Token string
	// Timeout bounds a status request's broker calls (default 10s).
	Timeout time.Duration
	Logger  zerolog.Logger
}

// MaxBody bounds a request body.
const MaxBody = 1 << 20

// Queue is one queue's status in GET /api/queues.
type Queue struct {
	Name  string `json:"name"`
	Vhost string `json:"vhost"`
	// Node is the master, which holds the queue.
	Node string `json:"node"`
	// Messages is the ready count from the master's broker; absent when
	// it could not be read.
	Messages *int `json:"messages,omitempty"`
	// SlavePids are the mirror nodes the policy places the queue on.
	SlavePids []string `json:"slave_pids"`
	// SynchronisedSlavePids are the mirrors known to hold every message.
	SynchronisedSlavePids []string `json:"synchronised_slave_pids"`
	Policy                string   `json:"policy"`
	// Error says why Messages is missing.
	Error string `json:"error,omitempty"`
}

// PolicyBody is the body of PUT /api/policies/{vhost}/{name}, as in
// RabbitMQ's HTTP API.
type PolicyBody struct {
	Pattern    string          `json:"pattern"`
	Definition json.RawMessage `json:"definition"`
	Priority   int             `json:"priority"`
	ApplyTo    string          `json:"apply-to"`
}

// ErrorBody is every error response.
type ErrorBody struct {
	Error  string `json:"error"`
	Reason string `json:"reason"`
}

type api struct {
	cfg Config
	log zerolog.Logger
}

// NewHandler returns the API's handler.
func NewHandler(cfg Config) (http.Handler, error) {
	if cfg.Node == nil || cfg.Policies == nil {
		return nil, errors.New("admin: Config needs Node and Policies")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	return &api{cfg: cfg, log: cfg.Logger}, nil
}

// ServeHTTP routes on the escaped path, so that a vhost such as "/"
// (%2F) stays one path segment.
func (a *api) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var segs []string
	for _, s := range strings.Split(strings.Trim(r.URL.EscapedPath(), "/"), "/") {
		u, err := url.PathUnescape(s)
		if err != nil {
			a.fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("path segment %q: %v", s, err))
			return
		}
		segs = append(segs, u)
	}
	route := func(methods ...string) bool {
		if slices.Contains(methods, r.Method) {
			return true
		}
		w.Header().Set("Allow", strings.Join(methods, ", "))
		a.fail(w, http.StatusMethodNotAllowed, "method_not_allowed", fmt.Sprintf("%s %s: use %s", r.Method, r.URL.Path, strings.Join(methods, " or ")))
		return false
	}
	switch {
	case len(segs) == 2 && segs[0] == "api" && segs[1] == "queues":
		if route(http.MethodGet) {
			a.queues(w, r, r.URL.Query().Get("vhost"))
		}
	case len(segs) == 2 && segs[0] == "api" && segs[1] == "policies":
		if route(http.MethodGet) {
			a.listPolicies(w, r, r.URL.Query().Get("vhost"))
		}
	case len(segs) == 3 && segs[0] == "api" && segs[1] == "policies":
		if route(http.MethodGet) {
			a.listPolicies(w, r, segs[2])
		}
	case len(segs) == 4 && segs[0] == "api" && segs[1] == "policies":
		if !route(http.MethodPut, http.MethodDelete) || !a.authorised(w, r) {
			return
		}
		if r.Method == http.MethodPut {
			a.setPolicy(w, r, segs[2], segs[3])
		} else {
			a.clearPolicy(w, segs[2], segs[3])
		}
	default:
		a.fail(w, http.StatusNotFound, "not_found", fmt.Sprintf("no endpoint %s %s", r.Method, r.URL.Path))
	}
}

// authorised checks the request's bearer token; it answers 401 itself
// when the token is missing or wrong, or when none is configured.
func (a *api) authorised(w http.ResponseWriter, r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	switch {
	case a.cfg.Token == "":
		w.Header().Set("WWW-Authenticate", `Bearer realm="mirrorproxy"`)
		a.fail(w, http.StatusUnauthorized, "not_authorised", "changes are disabled: this node has no admin.token configured")
		return false
	case !ok || subtle.ConstantTimeCompare([]byte(tok), []byte(a.cfg.Token)) != 1:
		w.Header().Set("WWW-Authenticate", `Bearer realm="mirrorproxy"`)
		a.log.Warn().Str("remote", r.RemoteAddr).Str("method", r.Method).Str("path", r.URL.Path).Msg("admin change refused: missing or wrong token")
		a.fail(w, http.StatusUnauthorized, "not_authorised", "changes need Authorization: Bearer with the node's admin.token")
		return false
	}
	return true
}

func (a *api) queues(w http.ResponseWriter, r *http.Request, vhost string) {
	if vhost == "" {
		vhost = "/"
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.Timeout)
	defer cancel()
	g := a.cfg.Node.Group()
	names := slices.Clone(a.cfg.Node.Queues(vhost))
	slices.Sort(names)
	out := []Queue{}
	for _, name := range slices.Compact(names) {
		e, ok := a.cfg.Policies.Effective(vhost, name, false, nil)
		if !ok {
			continue
		}
		q := Queue{Name: name, Vhost: vhost, Node: g.Master, Policy: e.Policy,
			SlavePids: replicate.Plan(e, g, nil, nil).Mirrors, SynchronisedSlavePids: []string{}}
		if q.SlavePids == nil {
			q.SlavePids = []string{}
		}
		if a.cfg.Synced != nil {
			for _, n := range a.cfg.Synced.Synced(vhost, name) {
				if slices.Contains(q.SlavePids, n) {
					q.SynchronisedSlavePids = append(q.SynchronisedSlavePids, n)
				}
			}
		}
		if a.cfg.Messages != nil {
			n, err := a.cfg.Messages.Messages(ctx, vhost, name)
			if err != nil {
				q.Error = err.Error()
			} else {
				q.Messages = &n
			}
		}
		out = append(out, q)
	}
	a.reply(w, http.StatusOK, out)
}

func (a *api) listPolicies(w http.ResponseWriter, _ *http.Request, vhost string) {
	ps := a.cfg.Policies.List(vhost)
	if ps == nil {
		ps = []replicate.Policy{}
	}
	a.reply(w, http.StatusOK, ps)
}

func (a *api) setPolicy(w http.ResponseWriter, r *http.Request, vhost, name string) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		a.fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("reading the body: %v", err))
		return
	}
	var b PolicyBody
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		a.fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("the body is not a policy (pattern, definition, priority, apply-to): %v", err))
		return
	}
	if len(b.Definition) == 0 {
		a.fail(w, http.StatusBadRequest, "bad_request", "the policy has no definition")
		return
	}
	def, err := replicate.ParseDefinitionJSON(b.Definition)
	if err != nil {
		a.fail(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	p, err := replicate.NewPolicy(vhost, name, b.Pattern, replicate.ApplyTo(b.ApplyTo), b.Priority, def)
	if err == nil {
		err = a.cfg.Policies.Set(p)
	}
	if err != nil {
		a.fail(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	a.log.Info().Str("vhost", p.Vhost).Str("policy", p.Name).Str("pattern", b.Pattern).
		Str("definition", p.Definition.String()).Int("priority", p.Priority).Msg("policy set (this node only)")
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) clearPolicy(w http.ResponseWriter, vhost, name string) {
	if err := a.cfg.Policies.Clear(vhost, name); err != nil {
		status := http.StatusBadRequest
		if errors.Is(err, replicate.ErrPolicyNotFound) {
			status = http.StatusNotFound
		}
		a.fail(w, status, "not_found", err.Error())
		return
	}
	a.log.Info().Str("vhost", vhost).Str("policy", name).Msg("policy cleared (this node only)")
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) reply(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		a.log.Error().Err(err).Msg("admin: encoding a reply")
		http.Error(w, `{"error":"internal","reason":"encoding the reply failed"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func (a *api) fail(w http.ResponseWriter, status int, kind, reason string) {
	a.reply(w, status, ErrorBody{Error: kind, Reason: reason})
}
