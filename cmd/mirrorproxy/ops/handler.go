package ops

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/failover/group"
	"github.com/mirrorproxy/mirrorproxy/proxy"
)

// QueueRef names a queue for Config.Messages.
type QueueRef struct{ Vhost, Name string }

// Config configures the handler.
type Config struct {
	// Group is the node of a group; nil for a plain sidecar.
	Group *group.Group
	// Front is a plain sidecar's proxy server (unused with Group).
	Front *proxy.Server
	// Upstream is a plain sidecar's broker, host:port: /readyz connects
	// to it (unused with Group, whose broker probe says).
	Upstream string
	// Messages counts mirrored queues' ready messages on the master's
	// broker for /metrics (queues it could not count are left out); nil
	// leaves queue_messages out.
	Messages func(ctx context.Context, queues []QueueRef) map[QueueRef]int
	// Version is the sidecar's, for build_info and the page.
	Version string
	Logger  zerolog.Logger
}

// Handler serves the operator endpoints (see the package comment) and
// passes every other request to api (nil: 404).
type Handler struct {
	cfg     Config
	api     http.Handler
	metrics http.Handler

	upMu     sync.Mutex
	upAt     time.Time // when upstreamOK was last checked
	upErr    error
	upstream func(ctx context.Context) error // dials the plain sidecar's broker
}

// healthTimeout bounds how long /healthz waits for the main loops.
const healthTimeout = 2 * time.Second

// NewHandler returns the operator endpoints in front of api.
func NewHandler(cfg Config, api http.Handler) *Handler {
	h := &Handler{cfg: cfg, api: api}
	reg := newRegistry(&h.cfg)
	h.metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: promLogger{cfg.Logger}, ErrorHandling: promhttp.ContinueOnError, Registry: reg,
	})
	h.upstream = func(ctx context.Context) error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", cfg.Upstream)
		if err != nil {
			return err
		}
		return c.Close()
	}
	return h
}

// promLogger puts promhttp's errors in the sidecar's log.
type promLogger struct{ log zerolog.Logger }

func (l promLogger) Println(v ...any) { l.log.Warn().Msg("metrics: " + fmt.Sprint(v...)) }

//go:embed page
var page embed.FS

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	read := r.Method == http.MethodGet || r.Method == http.MethodHead
	switch path {
	case "/metrics", "/healthz", "/readyz", "/", "/index.html", "/api/status", "/api/events":
		if !read {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, fmt.Sprintf("%s %s: use GET", r.Method, path), http.StatusMethodNotAllowed)
			return
		}
	}
	switch path {
	case "/metrics":
		h.metrics.ServeHTTP(w, r)
	case "/healthz":
		h.probe(w, r, h.Healthz(r.Context()))
	case "/readyz":
		h.probe(w, r, h.Readyz(r.Context()))
	case "/", "/index.html":
		b, _ := page.ReadFile("page/index.html")
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'")
		_, _ = w.Write(b)
	case "/api/status":
		h.status(w, r)
	case "/api/events":
		var evs []group.Event
		if h.cfg.Group != nil {
			evs = h.cfg.Group.Events()
		}
		if evs == nil {
			evs = []group.Event{}
		}
		writeJSON(w, http.StatusOK, evs)
	default:
		if h.api == nil {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "not_found",
				"reason": fmt.Sprintf("no endpoint %s %s (a plain sidecar serves /metrics, /healthz, /readyz and the status page; the admin API is a group node's)", r.Method, path)})
			return
		}
		h.api.ServeHTTP(w, r)
	}
}

// Check is a probe's verdict.
type Check = group.Check

// Healthz is the liveness verdict: the group's ring and driver answer
// within a short time. A plain sidecar is alive while it answers HTTP.
func (h *Handler) Healthz(ctx context.Context) Check {
	if h.cfg.Group == nil {
		return Check{OK: true}
	}
	return h.cfg.Group.Healthy(ctx, healthTimeout)
}

// upstreamCacheFor spares the plain sidecar's broker a connection per
// probe: a verdict is reused this long.
const upstreamCacheFor = 2 * time.Second

// Readyz is the readiness verdict: a group node's Ready; a plain sidecar
// is ready while its broker accepts TCP connections.
func (h *Handler) Readyz(ctx context.Context) Check {
	if g := h.cfg.Group; g != nil {
		return g.Ready()
	}
	h.upMu.Lock()
	defer h.upMu.Unlock()
	if time.Since(h.upAt) > upstreamCacheFor {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		h.upErr = h.upstream(ctx)
		cancel()
		h.upAt = time.Now()
	}
	if h.upErr != nil {
		return Check{Reasons: []string{fmt.Sprintf("the broker %s does not answer: %v", h.cfg.Upstream, h.upErr)}}
	}
	return Check{OK: true}
}

// probe answers a probe: 200 "ok", or 503 with a reason per line; JSON
// when asked.
func (h *Handler) probe(w http.ResponseWriter, r *http.Request, c Check) {
	status := http.StatusOK
	if !c.OK {
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("Cache-Control", "no-store")
	if r.URL.Query().Get("format") == "json" || strings.Contains(r.Header.Get("Accept"), "application/json") {
		if c.Reasons == nil {
			c.Reasons = []string{}
		}
		writeJSON(w, status, c)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	if c.OK {
		fmt.Fprintln(w, "ok")
		return
	}
	fmt.Fprintln(w, "not ok")
	for _, s := range c.Reasons {
		fmt.Fprintln(w, "- "+s)
	}
}

// PageStatus is /api/status: the node's state, its probes and version.
type PageStatus struct {
	Version string `json:"version"`
	Grouped bool   `json:"grouped"`
	// Node is the group node's state (absent on a plain sidecar).
	Node *group.Status `json:"node,omitempty"`
	// Sessions, Frames... are the front's (client sessions on this
	// sidecar).
	Sessions      int64  `json:"sessions"`
	SessionsTotal uint64 `json:"sessions_total"`
	PeerSessions  int64  `json:"peer_sessions"`
	Withheld      int64  `json:"confirms_withheld"`
	Healthy       Check  `json:"healthy"`
	Ready         Check  `json:"ready"`
	Error         string `json:"error,omitempty"`
	Time          string `json:"time"`
}

func (h *Handler) status(w http.ResponseWriter, r *http.Request) {
	ps := PageStatus{Version: h.cfg.Version, Grouped: h.cfg.Group != nil, Time: time.Now().UTC().Format(time.RFC3339)}
	var fs proxy.Stats
	if g := h.cfg.Group; g != nil {
		st, err := g.Status(r.Context())
		if err != nil {
			ps.Error = err.Error()
			fs, _ = g.FrontStats()
		} else {
			ps.Node, fs = &st, st.Front
		}
	} else if h.cfg.Front != nil {
		fs = h.cfg.Front.Stats()
	}
	ps.Sessions, ps.SessionsTotal, ps.PeerSessions, ps.Withheld = fs.ClientsOpen, fs.ClientsTotal, fs.LegsOpen, fs.ConfirmsWithheld
	ps.Healthy = h.Healthz(r.Context())
	ps.Ready = h.Readyz(r.Context())
	writeJSON(w, http.StatusOK, ps)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		http.Error(w, `{"error":"internal","reason":"encoding the reply failed"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

var _ prometheus.Collector = collector{}
