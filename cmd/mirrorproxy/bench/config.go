package bench

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// Built-in target names.
const (
	TargetDirect = "direct"
	TargetHop    = "hop"
	TargetHopBuf = "hopbuf"
	TargetProxy  = "proxy"
	// TargetMirrored is the product's mirrored group: 3 brokers, 3
	// sidecars in this process, clients on the master's sidecar.
	TargetMirrored = "mirrored"
	// TargetRMQMirrored is a RabbitMQ 3-node cluster with a classic
	// mirrored queue (ha-mode all, automatic sync); TargetRMQQuorum the
	// same cluster with a quorum queue.
	TargetRMQMirrored = "rmq-mirrored"
	TargetRMQQuorum   = "rmq-quorum"
)

// builtinTargets are the built-in target names, in the order the help
// lists them.
var builtinTargets = []string{TargetDirect, TargetHop, TargetHopBuf, TargetProxy, TargetMirrored, TargetRMQMirrored, TargetRMQQuorum}

// Workload names.
const (
	WorkloadPublish = "publish"
	WorkloadConsume = "consume"
)

// TargetSpec names one target. Addr is empty for the built-in targets and
// host:port for an external one.
type TargetSpec struct {
	Name string `json:"name"`
	Addr string `json:"addr,omitempty"`
}

// Config is one bench run's settings. DefaultConfig holds the defaults.
type Config struct {
	// BrokerURL is the broker's AMQP URL. Empty means "start one" (see
	// StartBroker).
	BrokerURL string
	// Targets are measured in this order (rotated per round). Ratios are
	// formed for every pair, later target over earlier one.
	Targets []TargetSpec
	// Workloads to run, in order: WorkloadPublish, WorkloadConsume.
	Workloads []string
	// Messages per publish run and per consume run.
	Messages int
	// MessageSize is the body size in bytes (at least 8: the body starts with
	// the message's sequence number).
	MessageSize int
	// Transient sends delivery_mode 1 instead of 2 (persistent). The broker
	// then confirms without waiting for its disk, which takes fsync noise
	// out of the comparison and leaves what the targets cost.
	Transient bool
	// Window is the most unconfirmed publishes in flight.
	Window int
	// Prefetch is the consumer's basic.qos prefetch count.
	Prefetch int
	// LatencySamples is the number of ping-pong messages per consume run.
	LatencySamples int
	// Runs is the number of measured rounds; Warmup rounds before them are
	// discarded.
	Runs   int
	Warmup int
	// RunTimeout bounds one workload run against one target.
	RunTimeout time.Duration
	// Logger receives progress lines.
	Logger zerolog.Logger
}

// DefaultConfig holds the defaults used by the command.
var DefaultConfig = Config{
	Targets:        []TargetSpec{{Name: TargetDirect}, {Name: TargetHop}, {Name: TargetProxy}},
	Workloads:      []string{WorkloadPublish, WorkloadConsume},
	Messages:       50000,
	MessageSize:    1024,
	Window:         256,
	Prefetch:       256,
	LatencySamples: 2000,
	Runs:           3,
	Warmup:         1,
	RunTimeout:     5 * time.Minute,
	Logger:         zerolog.Nop(),
}

// Validate reports the first setting that cannot work, naming it.
func (c *Config) Validate() error {
	if c.BrokerURL != "" {
		if _, err := brokerHostPort(c.BrokerURL); err != nil {
			return fmt.Errorf("bench: broker URL %q: %w", c.BrokerURL, err)
		}
	}
	if len(c.Targets) == 0 {
		return errors.New("bench: no targets")
	}
	seen := map[string]bool{}
	for _, t := range c.Targets {
		if seen[t.Name] {
			return fmt.Errorf("bench: target %q given twice", t.Name)
		}
		seen[t.Name] = true
		if t.Addr == "" {
			if !slices.Contains(builtinTargets, t.Name) {
				return fmt.Errorf("bench: unknown target %q (built-in: %s; external: NAME=HOST:PORT)", t.Name, strings.Join(builtinTargets, ", "))
			}
			continue
		}
		if _, _, err := net.SplitHostPort(t.Addr); err != nil {
			return fmt.Errorf("bench: target %q address %q: %w", t.Name, t.Addr, err)
		}
	}
	if len(c.Workloads) == 0 {
		return errors.New("bench: no workloads")
	}
	for _, w := range c.Workloads {
		if w != WorkloadPublish && w != WorkloadConsume {
			return fmt.Errorf("bench: unknown workload %q (publish, consume)", w)
		}
	}
	switch {
	case c.Messages < 1:
		return fmt.Errorf("bench: messages must be at least 1, got %d", c.Messages)
	case c.MessageSize < 8:
		return fmt.Errorf("bench: message size must be at least 8 bytes, got %d", c.MessageSize)
	case c.Window < 1:
		return fmt.Errorf("bench: confirm window must be at least 1, got %d", c.Window)
	case c.Prefetch < 1 || c.Prefetch > 65535:
		return fmt.Errorf("bench: prefetch must be 1..65535, got %d", c.Prefetch)
	case c.LatencySamples < 1:
		return fmt.Errorf("bench: latency samples must be at least 1, got %d", c.LatencySamples)
	case c.Runs < 1:
		return fmt.Errorf("bench: runs must be at least 1, got %d", c.Runs)
	case c.Warmup < 0:
		return fmt.Errorf("bench: warm-up rounds must not be negative, got %d", c.Warmup)
	case c.RunTimeout <= 0:
		return fmt.Errorf("bench: run timeout must be positive, got %s", c.RunTimeout)
	}
	return nil
}

// ParseTargets turns "direct,hop,proxy" plus NAME=HOST:PORT specs into
// TargetSpecs, built-in ones first, in the order given.
func ParseTargets(builtin []string, external []string) ([]TargetSpec, error) {
	var out []TargetSpec
	for _, list := range builtin {
		for name := range strings.SplitSeq(list, ",") {
			name = strings.TrimSpace(name)
			if name == "" {
				continue
			}
			out = append(out, TargetSpec{Name: name})
		}
	}
	for _, spec := range external {
		name, addr, ok := strings.Cut(spec, "=")
		name, addr = strings.TrimSpace(name), strings.TrimSpace(addr)
		if !ok || name == "" || addr == "" {
			return nil, fmt.Errorf("bench: --target %q: want NAME=HOST:PORT", spec)
		}
		if slices.Contains(builtinTargets, name) {
			return nil, fmt.Errorf("bench: --target %q: %q is a built-in target name", spec, name)
		}
		out = append(out, TargetSpec{Name: name, Addr: addr})
	}
	return out, nil
}

// brokerHostPort returns the host:port of an amqp:// URL.
func brokerHostPort(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	if u.Scheme != "amqp" {
		return "", fmt.Errorf("scheme %q is not supported (want amqp)", u.Scheme)
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return "", errors.New("no host")
	}
	if port == "" {
		port = "5672"
	}
	return net.JoinHostPort(host, port), nil
}

// urlVia returns the broker URL with its host:port replaced by addr, so a
// client reaches the broker through a target with the same credentials and
// vhost.
func urlVia(brokerURL, addr string) (string, error) {
	u, err := url.Parse(brokerURL)
	if err != nil {
		return "", fmt.Errorf("bench: broker URL: %w", err)
	}
	u.Host = addr
	return u.String(), nil
}
