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

	"github.com/mirrorproxy/mirrorproxy/failover/group"
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

// SyncReporter tells which mirrors of a queue are synced. One that also
// has the method of SyncingReporter fills Queue.Syncing.
type SyncReporter interface {
	Synced(vhost, queue string) []string
}

// SyncingReporter tells whether a queue's sync is running.
type SyncingReporter interface {
	Syncing(vhost, queue string) bool
}

// Changer changes policies for the whole group, through the master. An
// error wrapping group.ErrNotMaster answers 409 Conflict with its text
// (which names the master), one wrapping replicate.ErrPolicyNotFound 404.
type Changer interface {
	SetPolicy(p replicate.Policy) error
	ClearPolicy(vhost, name string) error
}

// Syncer runs rabbitmqctl's sync_queue and cancel_sync_queue on the
// master. Errors wrapping group.ErrNotMaster, replicate.ErrNotSyncing or
// replicate.ErrSyncCancelled answer 409, replicate.ErrUnknownQueue 404.
type Syncer interface {
	// SyncQueue synchronises the queue's unsynced mirrors and returns when
	// they are synced (nil at once when they already are) or ctx ends;
	// ctx ending stops the wait, not the sync.
	SyncQueue(ctx context.Context, vhost, queue string) error
	// CancelSyncQueue stops the queue's running sync.
	CancelSyncQueue(vhost, queue string) error
}

// Transferer moves the master role (ctl transfer_master). Errors wrapping
// group.ErrUnknownMember answer 404, group.ErrCannotHandOver 409.
type Transferer interface {
	// TransferMaster hands the master role to target ("" lets the group
	// choose a synced mirror) and returns the new master and the view's
	// epoch that names it.
	TransferMaster(ctx context.Context, target string) (master string, epoch uint64, err error)
}

// Config configures the API handler.
type Config struct {
	// Node is the running node; required.
	Node Node
	// Policies is the node's policy set, read by the API and, when
	// Changer is nil, changed in place (this node only); required.
	Policies *replicate.Policies
	// Changer, when set, makes the policy changes group-wide.
	Changer Changer
	// Syncer serves the queue actions sync and cancel_sync; nil answers
	// them 501.
	Syncer Syncer
	// Transferer serves POST /api/master; nil answers it 501.
	Transferer Transferer
	// Messages counts messages; nil leaves "messages" out of the status.
	Messages MessageCounter
	// Synced reports synced mirrors; nil reports none (no signal yet).
	Synced SyncReporter
	// Token authorises changes; empty refuses every change.
	Token string
	// Timeout bounds a status request's broker calls (default 10s); a
	// sync request waits as long as its client does.
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
	// Syncing is true while a sync of the queue runs (when the
	// SyncReporter knows).
	Syncing bool `json:"syncing,omitempty"`
	// Error says why Messages is missing.
	Error string `json:"error,omitempty"`
}

// Member is one member of the group in GET /api/nodes, in ring order.
type Member struct {
	Name string `json:"name"`
	// Master is true for the node whose broker serves the clients.
	Master bool `json:"master"`
	// JoinEpoch is the view that admitted this incarnation (lower is
	// older; elections prefer older).
	JoinEpoch uint64 `json:"join_epoch"`
}

// PolicyBody is the body of PUT /api/policies/{vhost}/{name}, as in
// RabbitMQ's HTTP API.
type PolicyBody struct {
	Pattern    string          `json:"pattern"`
	Definition json.RawMessage `json:"definition"`
	Priority   int             `json:"priority"`
	ApplyTo    string          `json:"apply-to"`
}

// ActionBody is the body of POST /api/queues/{vhost}/{name}/actions, as in
// RabbitMQ's HTTP API: Action is "sync" or "cancel_sync".
type ActionBody struct {
	Action string `json:"action"`
}

// TransferBody is the body of POST /api/master: hand the master role to
// Node ("" or absent: a synced mirror the group chooses).
type TransferBody struct {
	Node string `json:"node"`
}

// TransferReply answers POST /api/master: the master now, and the view's
// epoch that names it.
type TransferReply struct {
	Master string `json:"master"`
	Epoch  uint64 `json:"epoch"`
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
	case len(segs) == 2 && segs[0] == "api" && segs[1] == "nodes":
		if route(http.MethodGet) {
			a.nodes(w)
		}
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
	case len(segs) == 2 && segs[0] == "api" && segs[1] == "master":
		if route(http.MethodPost) && a.authorised(w, r) {
			a.transferMaster(w, r)
		}
	case len(segs) == 5 && segs[0] == "api" && segs[1] == "queues" && segs[4] == "actions":
		if route(http.MethodPost) && a.authorised(w, r) {
			a.queueAction(w, r, segs[2], segs[3])
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
			if sr, ok := a.cfg.Synced.(SyncingReporter); ok {
				q.Syncing = sr.Syncing(vhost, name)
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

// nodes lists the group's members as this node's view has them.
func (a *api) nodes(w http.ResponseWriter) {
	g := a.cfg.Node.Group()
	out := make([]Member, 0, len(g.Members))
	for _, m := range g.Members {
		out = append(out, Member{Name: m.Node, Master: m.Node == g.Master, JoinEpoch: m.JoinEpoch})
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
	if err != nil {
		a.fail(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	scope := "this node only"
	if a.cfg.Changer != nil {
		scope = "group-wide"
		err = a.cfg.Changer.SetPolicy(p)
	} else {
		err = a.cfg.Policies.Set(p)
	}
	if err != nil {
		a.failChange(w, err)
		return
	}
	a.log.Info().Str("vhost", p.Vhost).Str("policy", p.Name).Str("pattern", b.Pattern).
		Str("definition", p.Definition.String()).Int("priority", p.Priority).Msg("policy set (" + scope + ")")
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) clearPolicy(w http.ResponseWriter, vhost, name string) {
	scope := "this node only"
	var err error
	if a.cfg.Changer != nil {
		scope = "group-wide"
		err = a.cfg.Changer.ClearPolicy(vhost, name)
	} else {
		err = a.cfg.Policies.Clear(vhost, name)
	}
	if err != nil {
		a.failChange(w, err)
		return
	}
	a.log.Info().Str("vhost", vhost).Str("policy", name).Msg("policy cleared (" + scope + ")")
	w.WriteHeader(http.StatusNoContent)
}

// queueAction runs sync or cancel_sync on a queue. A sync answers when the
// queue's mirrors are synced, which can take minutes: the request is
// bounded by its context (the client going away, the server closing), not
// by the server's read and write timeouts.
func (a *api) queueAction(w http.ResponseWriter, r *http.Request, vhost, name string) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		a.fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("reading the body: %v", err))
		return
	}
	var b ActionBody
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		a.fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf(`the body is not {"action": "sync" or "cancel_sync"}: %v`, err))
		return
	}
	if b.Action != "sync" && b.Action != "cancel_sync" {
		a.fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("action %q: use sync or cancel_sync", b.Action))
		return
	}
	if a.cfg.Syncer == nil {
		a.fail(w, http.StatusNotImplemented, "not_implemented", "this node cannot synchronise queues")
		return
	}
	log := a.log.With().Str("vhost", vhost).Str("queue", name).Logger()
	if b.Action == "cancel_sync" {
		if err := a.cfg.Syncer.CancelSyncQueue(vhost, name); err != nil {
			a.failChange(w, err)
			return
		}
		log.Info().Msg("queue sync cancelled")
		w.WriteHeader(http.StatusNoContent)
		return
	}
	rc := http.NewResponseController(w)
	if err := errors.Join(rc.SetReadDeadline(time.Time{}), rc.SetWriteDeadline(time.Time{})); err != nil {
		log.Warn().Err(err).Msg("admin: a long sync_queue may be cut by the server's timeouts")
	}
	log.Info().Msg("queue sync requested")
	start := time.Now()
	if err := a.cfg.Syncer.SyncQueue(r.Context(), vhost, name); err != nil {
		if r.Context().Err() != nil {
			log.Info().Err(err).Msg("stopped waiting for a queue sync: the request ended; the sync goes on")
			a.fail(w, http.StatusServiceUnavailable, "unavailable", "stopped waiting: the admin API is closing or the client went away; the sync goes on")
			return
		}
		a.failChange(w, err)
		return
	}
	log.Info().Dur("took", time.Since(start)).Msg("queue synced")
	w.WriteHeader(http.StatusNoContent)
}

// transferMaster hands the master role over and answers once a view names
// the new master (a handover takes up to the group's handover timeout).
func (a *api) transferMaster(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		a.fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("reading the body: %v", err))
		return
	}
	var b TransferBody
	if len(bytes.TrimSpace(body)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&b); err != nil {
			a.fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf(`the body is not {"node": NODE}: %v`, err))
			return
		}
	}
	if a.cfg.Transferer == nil {
		a.fail(w, http.StatusNotImplemented, "not_implemented", "this node is not in a group: there is no master to transfer")
		return
	}
	a.log.Info().Str("target", b.Node).Str("remote", r.RemoteAddr).Msg("master transfer requested")
	master, epoch, err := a.cfg.Transferer.TransferMaster(r.Context(), b.Node)
	if err != nil {
		a.failChange(w, err)
		return
	}
	a.log.Info().Str("master", master).Uint64("epoch", epoch).Msg("master transferred")
	a.reply(w, http.StatusOK, TransferReply{Master: master, Epoch: epoch})
}

// failChange answers a change the Changer or Syncer refused or could not
// make, with a status by the error's kind.
func (a *api) failChange(w http.ResponseWriter, err error) {
	status, kind := http.StatusInternalServerError, "internal"
	switch {
	case errors.Is(err, group.ErrNotMaster):
		status, kind = http.StatusConflict, "not_master"
	case errors.Is(err, group.ErrUnknownMember):
		status, kind = http.StatusNotFound, "not_found"
	case errors.Is(err, group.ErrCannotHandOver):
		status, kind = http.StatusConflict, "cannot_hand_over"
	case errors.Is(err, replicate.ErrPolicyNotFound), errors.Is(err, replicate.ErrUnknownQueue):
		status, kind = http.StatusNotFound, "not_found"
	case errors.Is(err, replicate.ErrNotSyncing):
		status, kind = http.StatusConflict, "not_syncing"
	case errors.Is(err, replicate.ErrSyncCancelled):
		status, kind = http.StatusConflict, "cancelled"
	case errors.Is(err, replicate.ErrSyncFailed):
		status, kind = http.StatusBadGateway, "sync_failed"
	case errors.Is(err, replicate.ErrStopped), errors.Is(err, replicate.ErrNoBroker):
		status, kind = http.StatusServiceUnavailable, "unavailable"
	case errors.Is(err, replicate.ErrInvalidPolicy):
		status, kind = http.StatusBadRequest, "bad_request"
	}
	if status == http.StatusInternalServerError {
		a.log.Warn().Err(err).Msg("admin change failed")
	}
	a.fail(w, status, kind, reason(err))
}

// reason is an error's text for the API's user: without the package
// prefix ("group: ", "replicate: ") of the sentinel it starts with.
func reason(err error) string {
	s := err.Error()
	for _, p := range []string{"group: ", "replicate: "} {
		s = strings.TrimPrefix(s, p)
	}
	return s
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
