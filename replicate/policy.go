package replicate

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// The mirroring keys of a policy definition, in the order RabbitMQ checks
// them. Every other key is the broker's business and passes through.
const (
	KeyHAMode              = "ha-mode"
	KeyHAParams            = "ha-params"
	KeyHASyncMode          = "ha-sync-mode"
	KeyHASyncBatchSize     = "ha-sync-batch-size"
	KeyHAPromoteOnShutdown = "ha-promote-on-shutdown"
	KeyHAPromoteOnFailure  = "ha-promote-on-failure"
)

var haKeys = []string{KeyHAMode, KeyHAParams, KeyHASyncMode, KeyHASyncBatchSize,
	KeyHAPromoteOnShutdown, KeyHAPromoteOnFailure}

// HAKeys returns the mirroring keys of a definition.
func HAKeys() []string { return slices.Clone(haKeys) }

// IsHAKey reports whether key is one of the mirroring keys.
func IsHAKey(key string) bool { return slices.Contains(haKeys, key) }

// The legacy (RabbitMQ 2.x) queue arguments for mirroring.
const (
	ArgHAPolicy       = "x-ha-policy"
	ArgHAPolicyParams = "x-ha-policy-params"
)

// Mode is ha-mode: which nodes hold a queue.
type Mode string

// The values of ha-mode.
const (
	ModeAll     Mode = "all"     // every member of the group
	ModeExactly Mode = "exactly" // Count copies, the master's included
	ModeNodes   Mode = "nodes"   // the listed members, and the master
)

// SyncMode is ha-sync-mode: whether a new mirror copies old messages.
type SyncMode string

// The values of ha-sync-mode.
const (
	SyncManual    SyncMode = "manual"    // only on sync_queue (the default)
	SyncAutomatic SyncMode = "automatic" // as soon as the mirror starts
)

// Promote is ha-promote-on-shutdown and ha-promote-on-failure: whether an
// unsynced mirror may become master.
type Promote string

// The values of ha-promote-on-shutdown and ha-promote-on-failure.
const (
	PromoteWhenSynced Promote = "when-synced"
	PromoteAlways     Promote = "always"
)

// Defaults of the optional mirroring keys, as in RabbitMQ 3.10.
const (
	DefaultSyncMode          = SyncManual
	DefaultSyncBatchSize     = 4096 // RabbitMQ's mirroring_sync_batch_size
	DefaultPromoteOnShutdown = PromoteWhenSynced
	DefaultPromoteOnFailure  = PromoteAlways
)

// HA is the mirroring part of a definition, every field resolved (defaults
// filled in).
type HA struct {
	Mode Mode
	// Count is ha-params for ModeExactly: copies of the queue, the master's
	// included (1 means no mirror).
	Count int
	// Nodes is ha-params for ModeNodes, as given.
	Nodes             []string
	SyncMode          SyncMode
	SyncBatchSize     int
	PromoteOnShutdown Promote
	PromoteOnFailure  Promote
}

func (h HA) clone() HA {
	h.Nodes = slices.Clone(h.Nodes)
	return h
}

func defaultHA(mode Mode) HA {
	return HA{Mode: mode, SyncMode: DefaultSyncMode, SyncBatchSize: DefaultSyncBatchSize,
		PromoteOnShutdown: DefaultPromoteOnShutdown, PromoteOnFailure: DefaultPromoteOnFailure}
}

// Errors. Every validation error is a *PolicyError and wraps ErrInvalidPolicy.
var (
	ErrInvalidPolicy  = errors.New("invalid policy")
	ErrPolicyNotFound = errors.New("no such policy")
)

// PolicyError is a policy, definition or legacy argument that does not
// validate. Msg names the key and the value given.
type PolicyError struct {
	Policy string // the policy's name, when known
	Key    string // "ha-params", "pattern", "x-ha-policy", "definition", ...
	Msg    string
}

func (e *PolicyError) Error() string {
	if e.Policy != "" {
		return fmt.Sprintf("policy %q: %s", e.Policy, e.Msg)
	}
	return e.Msg
}

// Unwrap makes errors.Is(err, ErrInvalidPolicy) true.
func (e *PolicyError) Unwrap() error { return ErrInvalidPolicy }

func invalid(key, format string, args ...any) *PolicyError {
	return &PolicyError{Key: key, Msg: fmt.Sprintf(format, args...)}
}

func named(err error, policy string) error {
	var pe *PolicyError
	if errors.As(err, &pe) && pe.Policy == "" {
		pe.Policy = policy
	}
	return err
}

// Definition is a validated policy definition: every key as given (values
// kept in a canonical JSON form) and the resolved mirroring settings. It is
// immutable; the zero Definition is empty and does not validate.
type Definition struct {
	keys  map[string]any // nil, bool, string, json.Number, []any, map[string]any
	ha    HA
	hasHA bool
}

// ParseDefinitionJSON parses a definition as `rabbitmqctl set_policy` and
// `mirrorproxy ctl set_policy` take it: one JSON object. A key given twice
// keeps its last value, as in RabbitMQ.
func ParseDefinitionJSON(b []byte) (Definition, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return Definition{}, invalid("definition", "definition is not valid JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Definition{}, invalid("definition", "definition has more after its JSON object")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return Definition{}, invalid("definition", "definition must be a JSON object, got %s", show(v))
	}
	return ParseDefinition(m)
}

// ParseDefinition validates a definition decoded from YAML or built in Go,
// with the same rules as ParseDefinitionJSON. Values may be nil, bool,
// string, any Go integer or float type, json.Number, []any, []string,
// map[string]any or map[any]any with string keys. Go integer types are
// integers; floats are floats even when whole (YAML's 2.0, like JSON's 2.0,
// is no count); decode JSON with UseNumber to keep the difference.
func ParseDefinition(m map[string]any) (Definition, error) {
	if len(m) == 0 {
		return Definition{}, invalid("definition", `definition is empty: give at least one key, e.g. {"ha-mode":"all"}`)
	}
	keys := make(map[string]any, len(m))
	for k, v := range m {
		c, err := canon(v, k)
		if err != nil {
			return Definition{}, err
		}
		keys[k] = c
	}
	ha, hasHA, err := validateHA(keys)
	if err != nil {
		return Definition{}, err
	}
	return Definition{keys: keys, ha: ha, hasHA: hasHA}, nil
}

// canon turns v into its canonical JSON value, or says why it cannot be.
func canon(v any, path string) (any, error) {
	switch x := v.(type) {
	case nil, bool, string:
		return x, nil
	case json.Number:
		if s := string(x); s == "" || (s[0] != '-' && (s[0] < '0' || s[0] > '9')) || !json.Valid([]byte(s)) {
			return nil, invalid(path, "%s: %q is not a number", path, s)
		}
		return x, nil
	case int, int8, int16, int32, int64:
		return json.Number(fmt.Sprint(x)), nil
	case uint, uint8, uint16, uint32, uint64, uintptr:
		return json.Number(fmt.Sprint(x)), nil
	case float32:
		return canonFloat(float64(x), path)
	case float64:
		return canonFloat(x, path)
	case []string:
		out := make([]any, len(x))
		for i, s := range x {
			out[i] = s
		}
		return out, nil
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			c, err := canon(e, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			c, err := canon(e, path+"."+k)
			if err != nil {
				return nil, err
			}
			out[k] = c
		}
		return out, nil
	case map[any]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			ks, ok := k.(string)
			if !ok {
				return nil, invalid(path, "%s: key %v is not a string", path, k)
			}
			c, err := canon(e, path+"."+ks)
			if err != nil {
				return nil, err
			}
			out[ks] = c
		}
		return out, nil
	}
	return nil, invalid(path, "%s: a %T value cannot be part of a policy definition", path, v)
}

func canonFloat(f float64, path string) (any, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, invalid(path, "%s: %v is not a JSON number", path, f)
	}
	s := strconv.FormatFloat(f, 'g', -1, 64)
	if !strings.ContainsAny(s, ".eE") {
		s += ".0" // stays a float: 2.0 is not the integer 2
	}
	return json.Number(s), nil
}

// show renders a canonical value as JSON, for error messages.
func show(v any) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Sprint(v)
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

func positiveInt(v any) (int, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return 0, false
	}
	i, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil || i <= 0 || int64(int(i)) != i {
		return 0, false
	}
	return int(i), true
}

// validateHA checks the mirroring keys in RabbitMQ's order and resolves
// them; hasHA is false when the definition has none.
func validateHA(keys map[string]any) (HA, bool, error) {
	var found []string
	for _, k := range haKeys {
		if v, ok := keys[k]; ok {
			found = append(found, k+" "+show(v))
		}
	}
	if len(found) == 0 {
		return HA{}, false, unknownHAKeys(keys)
	}
	modeV, ok := keys[KeyHAMode]
	if !ok {
		return HA{}, false, invalid(KeyHAMode, "ha-mode must be specified to use %s", strings.Join(found, ", "))
	}
	mode, _ := modeV.(string)
	switch Mode(mode) {
	case ModeAll, ModeExactly, ModeNodes:
	default:
		return HA{}, false, invalid(KeyHAMode, `ha-mode %s is not valid: use "all", "exactly" or "nodes"`, show(modeV))
	}
	ha := defaultHA(Mode(mode))
	params, hasParams := keys[KeyHAParams]
	switch ha.Mode {
	case ModeAll:
		if hasParams {
			return HA{}, false, invalid(KeyHAParams, `ha-mode "all" takes no ha-params, got ha-params %s`, show(params))
		}
	case ModeExactly:
		if !hasParams {
			msg := `ha-mode "exactly" needs ha-params: a positive integer, the number of copies counting the master`
			if c, ok := keys["count"]; ok {
				msg += fmt.Sprintf(` (found "count": %s; the number goes in ha-params, e.g. {"ha-mode":"exactly","ha-params":2})`, show(c))
			}
			return HA{}, false, invalid(KeyHAParams, "%s", msg)
		}
		n, ok := positiveInt(params)
		if !ok {
			return HA{}, false, invalid(KeyHAParams, `ha-params must be a positive integer for ha-mode "exactly", got %s`, show(params))
		}
		ha.Count = n
	case ModeNodes:
		if !hasParams {
			return HA{}, false, invalid(KeyHAParams, `ha-mode "nodes" needs ha-params: a list of node names`)
		}
		list, ok := params.([]any)
		if !ok {
			return HA{}, false, invalid(KeyHAParams, `ha-params must be a list of node names for ha-mode "nodes", got %s`, show(params))
		}
		if len(list) == 0 {
			return HA{}, false, invalid(KeyHAParams, `ha-params must name at least one node for ha-mode "nodes", got []`)
		}
		for _, e := range list {
			s, ok := e.(string)
			if !ok {
				return HA{}, false, invalid(KeyHAParams, `ha-params must hold node names (strings) for ha-mode "nodes", got %s in %s`, show(e), show(params))
			}
			ha.Nodes = append(ha.Nodes, s)
		}
	}
	if v, ok := keys[KeyHASyncMode]; ok {
		s, _ := v.(string)
		if SyncMode(s) != SyncManual && SyncMode(s) != SyncAutomatic {
			return HA{}, false, invalid(KeyHASyncMode, `ha-sync-mode must be "manual" or "automatic", got %s`, show(v))
		}
		ha.SyncMode = SyncMode(s)
	}
	if v, ok := keys[KeyHASyncBatchSize]; ok {
		n, ok := positiveInt(v)
		if !ok {
			return HA{}, false, invalid(KeyHASyncBatchSize, "ha-sync-batch-size must be an integer greater than 0, got %s", show(v))
		}
		ha.SyncBatchSize = n
	}
	for _, p := range []struct {
		key string
		dst *Promote
	}{{KeyHAPromoteOnShutdown, &ha.PromoteOnShutdown}, {KeyHAPromoteOnFailure, &ha.PromoteOnFailure}} {
		if v, ok := keys[p.key]; ok {
			s, _ := v.(string)
			if Promote(s) != PromoteAlways && Promote(s) != PromoteWhenSynced {
				return HA{}, false, invalid(p.key, `%s must be "always" or "when-synced", got %s`, p.key, show(v))
			}
			*p.dst = Promote(s)
		}
	}
	if err := unknownHAKeys(keys); err != nil {
		return HA{}, false, err
	}
	return ha, true, nil
}

// unknownHAKeys refuses keys that look like mirroring keys but are not one
// (a typo would otherwise pass through to the broker, or be lost).
func unknownHAKeys(keys map[string]any) error {
	var bad []string
	for k := range keys {
		if strings.HasPrefix(strings.ToLower(k), "ha-") && !IsHAKey(k) {
			bad = append(bad, k)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	slices.Sort(bad)
	return invalid(bad[0], "%s is not a mirroring setting: the keys are %s", strings.Join(bad, ", "), strings.Join(haKeys, ", "))
}

// HA returns the resolved mirroring settings, and false when the definition
// has no ha-mode.
func (d Definition) HA() (HA, bool) {
	if !d.hasHA {
		return HA{}, false
	}
	return d.ha.clone(), true
}

// Keys returns the definition's keys, sorted.
func (d Definition) Keys() []string {
	ks := make([]string, 0, len(d.keys))
	for k := range d.keys {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// Get returns a copy of the canonical value of key: nil, bool, string,
// json.Number, []any or map[string]any.
func (d Definition) Get(key string) (any, bool) {
	v, ok := d.keys[key]
	return cloneValue(v), ok
}

// Passthrough returns a copy of the keys that are not mirroring keys
// (message-ttl, dead-letter-exchange, ...): the broker's business.
func (d Definition) Passthrough() map[string]any {
	out := make(map[string]any)
	for k, v := range d.keys {
		if !IsHAKey(k) {
			out[k] = cloneValue(v)
		}
	}
	return out
}

func cloneValue(v any) any {
	switch x := v.(type) {
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = cloneValue(e)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = cloneValue(e)
		}
		return out
	}
	return v
}

// MarshalJSON writes the definition as rabbitmqctl list_policies shows it:
// compact, keys sorted, numbers as given.
func (d Definition) MarshalJSON() ([]byte, error) {
	if d.keys == nil {
		return []byte("{}"), nil
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(d.keys); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// UnmarshalJSON parses and validates a definition (ParseDefinitionJSON).
func (d *Definition) UnmarshalJSON(b []byte) error {
	def, err := ParseDefinitionJSON(b)
	if err != nil {
		return err
	}
	*d = def
	return nil
}

// String returns the definition's JSON.
func (d Definition) String() string {
	b, _ := d.MarshalJSON() // canonical values always encode
	return string(b)
}

// Equal reports whether two definitions have the same keys and values.
func (d Definition) Equal(o Definition) bool { return d.String() == o.String() }

// ApplyTo is a policy's apply-to: which kind of object it configures.
type ApplyTo string

// The values of apply-to.
const (
	ApplyToQueues    ApplyTo = "queues"
	ApplyToExchanges ApplyTo = "exchanges"
	ApplyToAll       ApplyTo = "all"
)

// Policy is one validated policy. Build it with NewPolicy, Spec.Policy or
// json.Unmarshal; Policies.Set refuses one that does not validate.
type Policy struct {
	Vhost      string
	Name       string
	Pattern    *regexp.Regexp // Go RE2 syntax, matched anywhere in the name
	ApplyTo    ApplyTo
	Priority   int // the highest matching priority wins
	Definition Definition
}

// NewPolicy validates a policy. An empty vhost means "/" and an empty
// applyTo "all", as with rabbitmqctl set_policy.
func NewPolicy(vhost, name, pattern string, applyTo ApplyTo, priority int, def Definition) (Policy, error) {
	if vhost == "" {
		vhost = "/"
	}
	if applyTo == "" {
		applyTo = ApplyToAll
	}
	re, err := regexp.Compile(pattern)
	if err != nil {
		return Policy{}, named(invalid("pattern", "pattern %q is not a valid regular expression (Go RE2 syntax: no look-around, no back-references): %v", pattern, err), name)
	}
	p := Policy{Vhost: vhost, Name: name, Pattern: re, ApplyTo: applyTo, Priority: priority, Definition: def}
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	return p, nil
}

// Validate checks a policy built by hand.
func (p Policy) Validate() error {
	var err error
	switch {
	case p.Name == "":
		err = invalid("name", "policy name is empty")
	case p.Vhost == "":
		err = invalid("vhost", "vhost is empty")
	case p.Pattern == nil:
		err = invalid("pattern", "pattern is missing")
	case p.ApplyTo != ApplyToQueues && p.ApplyTo != ApplyToExchanges && p.ApplyTo != ApplyToAll:
		err = invalid("apply-to", `apply-to %q is not valid: use "queues", "exchanges" or "all"`, string(p.ApplyTo))
	case len(p.Definition.keys) == 0:
		err = invalid("definition", "definition is empty")
	}
	if err != nil {
		return named(err, p.Name)
	}
	return nil
}

// Matches reports whether p applies to the queue named queue in vhost:
// same vhost, apply-to queues or all, and the pattern matches somewhere in
// the name (as Erlang's re:run does; anchor with ^ and $).
func (p Policy) Matches(vhost, queue string) bool {
	return p.Vhost == vhost && p.ApplyTo != ApplyToExchanges && p.Pattern.MatchString(queue)
}

// Row is the policy as a row of rabbitmqctl list_policies: vhost, name,
// pattern, apply-to, definition (JSON), priority.
func (p Policy) Row() []string {
	pat := ""
	if p.Pattern != nil {
		pat = p.Pattern.String()
	}
	return []string{p.Vhost, p.Name, pat, string(p.ApplyTo),
		p.Definition.String(), strconv.Itoa(p.Priority)}
}

// RowHeader names the columns of Row.
func RowHeader() []string {
	return []string{"vhost", "name", "pattern", "apply-to", "definition", "priority"}
}

// Spec is a policy as configuration data, before validation; the YAML and
// JSON field names are those of RabbitMQ's definitions export.
type Spec struct {
	Vhost      string         `yaml:"vhost" json:"vhost"`
	Name       string         `yaml:"name" json:"name"`
	Pattern    string         `yaml:"pattern" json:"pattern"`
	ApplyTo    string         `yaml:"apply-to" json:"apply-to"`
	Priority   int            `yaml:"priority" json:"priority"`
	Definition map[string]any `yaml:"definition" json:"definition"`
}

// Policy validates the spec (ParseDefinition, then NewPolicy).
func (s Spec) Policy() (Policy, error) {
	def, err := ParseDefinition(s.Definition)
	if err != nil {
		return Policy{}, named(err, s.Name)
	}
	return NewPolicy(s.Vhost, s.Name, s.Pattern, ApplyTo(s.ApplyTo), s.Priority, def)
}

// policyJSON is the definitions-export form of a policy.
type policyJSON struct {
	Vhost      string          `json:"vhost"`
	Name       string          `json:"name"`
	Pattern    *string         `json:"pattern"`
	ApplyTo    string          `json:"apply-to"`
	Definition json.RawMessage `json:"definition"`
	Priority   json.Number     `json:"priority"`
}

// MarshalJSON writes the policy as RabbitMQ's definitions export does.
func (p Policy) MarshalJSON() ([]byte, error) {
	def, err := p.Definition.MarshalJSON()
	if err != nil {
		return nil, err
	}
	pat := ""
	if p.Pattern != nil {
		pat = p.Pattern.String()
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	err = enc.Encode(policyJSON{Vhost: p.Vhost, Name: p.Name, Pattern: &pat, ApplyTo: string(p.ApplyTo),
		Definition: def, Priority: json.Number(strconv.Itoa(p.Priority))})
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), err
}

// UnmarshalJSON reads and validates a policy in the definitions-export
// form; vhost, apply-to and priority may be left out.
func (p *Policy) UnmarshalJSON(b []byte) error {
	var j policyJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&j); err != nil {
		return invalid("policy", "policy is not valid JSON: %v", err)
	}
	if j.Pattern == nil {
		return named(invalid("pattern", "pattern is missing"), j.Name)
	}
	if len(j.Definition) == 0 {
		return named(invalid("definition", "definition is missing"), j.Name)
	}
	prio := 0
	if j.Priority != "" {
		n, err := strconv.ParseInt(string(j.Priority), 10, 0)
		if err != nil {
			return named(invalid("priority", "priority must be an integer, got %s", j.Priority), j.Name)
		}
		prio = int(n)
	}
	def, err := ParseDefinitionJSON(j.Definition)
	if err != nil {
		return named(err, j.Name)
	}
	np, err := NewPolicy(j.Vhost, j.Name, *j.Pattern, ApplyTo(j.ApplyTo), prio, def)
	if err != nil {
		return err
	}
	*p = np
	return nil
}

// outranks reports whether a wins over b for an object both match: the
// higher priority, and among equal priorities the name that sorts last (so
// that the effective policy is the last matching row of List).
func outranks(a, b Policy) bool {
	if a.Priority != b.Priority {
		return a.Priority > b.Priority
	}
	return a.Name > b.Name
}

// Effective is how a queue is mirrored: the resolved settings and where
// they came from.
type Effective struct {
	HA
	// Policy names the policy that gave the settings; empty when they came
	// from the queue's legacy x-ha-policy arguments.
	Policy string
	// Legacy is true when the settings came from x-ha-policy arguments.
	Legacy bool
}

// Policies is the set of policies of a group, keyed by vhost and name. The
// zero value is empty and ready; it is safe for concurrent use.
type Policies struct {
	mu sync.RWMutex
	m  map[policyKey]Policy
}

type policyKey struct{ vhost, name string }

// Set adds p, or replaces the policy with p's vhost and name.
func (ps *Policies) Set(p Policy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.m == nil {
		ps.m = make(map[policyKey]Policy)
	}
	ps.m[policyKey{p.Vhost, p.Name}] = p
	return nil
}

// Clear removes a policy; the error wraps ErrPolicyNotFound when there is
// none by that name in vhost.
func (ps *Policies) Clear(vhost, name string) error {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	k := policyKey{vhost, name}
	if _, ok := ps.m[k]; !ok {
		return fmt.Errorf("%w: %q in vhost %q", ErrPolicyNotFound, name, vhost)
	}
	delete(ps.m, k)
	return nil
}

// Replace makes ps hold exactly the given policies (a new master's set,
// replicated to the mirrors). Nothing changes when one is invalid.
func (ps *Policies) Replace(list []Policy) error {
	m := make(map[policyKey]Policy, len(list))
	for _, p := range list {
		if err := p.Validate(); err != nil {
			return err
		}
		m[policyKey{p.Vhost, p.Name}] = p
	}
	ps.mu.Lock()
	ps.m = m
	ps.mu.Unlock()
	return nil
}

// Get returns the policy named name in vhost.
func (ps *Policies) Get(vhost, name string) (Policy, bool) {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	p, ok := ps.m[policyKey{vhost, name}]
	return p, ok
}

// List returns the policies of vhost ("" for every vhost) in the order of
// rabbitmqctl list_policies: by vhost, then priority ascending (so the
// winner of an overlap comes last), then name.
func (ps *Policies) List(vhost string) []Policy {
	ps.mu.RLock()
	out := make([]Policy, 0, len(ps.m))
	for k, p := range ps.m {
		if vhost == "" || k.vhost == vhost {
			out = append(out, p)
		}
	}
	ps.mu.RUnlock()
	slices.SortFunc(out, func(a, b Policy) int {
		return cmp.Or(cmp.Compare(a.Vhost, b.Vhost), cmp.Compare(a.Priority, b.Priority), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// Match returns the policy in force for a queue, mirroring or not: the one
// with the highest priority among those that match (Policy.Matches); among
// equal priorities, the one whose name sorts last.
func (ps *Policies) Match(vhost, queue string) (Policy, bool) {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	var best Policy
	found := false
	for _, p := range ps.m {
		if p.Matches(vhost, queue) && (!found || outranks(p, best)) {
			best, found = p, true
		}
	}
	return best, found
}

// Effective resolves how a queue is mirrored; false means it is not.
// queue is the name the broker gave it, args its declare arguments.
// Exclusive queues and amq.* names (server-named queues) are never
// mirrored. The policy in force wins when it has an ha-mode;
// otherwise valid legacy x-ha-policy arguments decide (malformed ones,
// which LegacyHA reports, mirror nothing).
func (ps *Policies) Effective(vhost, queue string, exclusive bool, args amqp.Table) (*Effective, bool) {
	if exclusive || strings.HasPrefix(queue, "amq.") {
		// amq.* names are the broker's (server-named amq.gen-* queues):
		// a mirror broker refuses to declare them (403).
		return nil, false
	}
	if p, ok := ps.Match(vhost, queue); ok {
		if ha, ok := p.Definition.HA(); ok {
			return &Effective{HA: ha, Policy: p.Name}, true
		}
	}
	if ha, ok, err := LegacyHA(args); ok && err == nil {
		return &Effective{HA: ha, Legacy: true}, true
	}
	return nil, false
}

// LegacyHA reads RabbitMQ 2.x mirroring arguments: x-ha-policy "all", or
// "nodes" with x-ha-policy-params, an array of node names. ok is false when
// x-ha-policy is absent. err describes malformed arguments, which RabbitMQ
// 2.x refused with PRECONDITION_FAILED (406). The other settings take the
// policy defaults.
func LegacyHA(args amqp.Table) (ha HA, ok bool, err error) {
	v, present := args.Get(ArgHAPolicy)
	if !present {
		return HA{}, false, nil
	}
	s, isStr := v.(string)
	if !isStr {
		return HA{}, true, invalid(ArgHAPolicy, `x-ha-policy must be a string, "all" or "nodes", got %s`, showArg(v))
	}
	switch s {
	case "all":
		return defaultHA(ModeAll), true, nil
	case "nodes":
	default:
		return HA{}, true, invalid(ArgHAPolicy, `x-ha-policy %q is not valid: use "all" or "nodes" (other modes need a policy)`, s)
	}
	pv, present := args.Get(ArgHAPolicyParams)
	if !present {
		return HA{}, true, invalid(ArgHAPolicyParams, `x-ha-policy "nodes" needs x-ha-policy-params: an array of node names`)
	}
	list, isList := pv.([]any)
	if !isList {
		return HA{}, true, invalid(ArgHAPolicyParams, "x-ha-policy-params must be an array of node names, got %s", showArg(pv))
	}
	if len(list) == 0 {
		return HA{}, true, invalid(ArgHAPolicyParams, "x-ha-policy-params must name at least one node")
	}
	ha = defaultHA(ModeNodes)
	for _, e := range list {
		n, isStr := e.(string)
		if !isStr {
			return HA{}, true, invalid(ArgHAPolicyParams, "x-ha-policy-params must hold node names (long strings), got %s", showArg(e))
		}
		ha.Nodes = append(ha.Nodes, n)
	}
	return ha, true, nil
}

func showArg(v any) string {
	if s, ok := v.(string); ok {
		return strconv.Quote(s)
	}
	return fmt.Sprintf("%v (%T)", v, v)
}

// Member is a node of the group as placement sees it.
type Member struct {
	Node string
	// JoinEpoch is when the member joined (the view that admitted it);
	// lower is older.
	JoinEpoch uint64
}

// Group is the view as placement sees it.
type Group struct {
	Members []Member // ring order
	Master  string   // holds every mirrored queue
}

// Change is the mirror set a queue should have and how it differs from the
// set it has.
type Change struct {
	// Mirrors is the new mirror set, oldest member first (join epoch, then
	// ring order). The master is never in it.
	Mirrors []string
	// Added are new mirrors: each starts empty and unsynced; the caller
	// starts them and syncs them (ha-sync-mode).
	Added []string
	// Removed are current mirrors to drop, in their order in current. The
	// master is never listed: its copy is the queue.
	Removed []string
}

// Changed reports whether the mirror set changes.
func (c Change) Changed() bool { return len(c.Added) > 0 || len(c.Removed) > 0 }

// Plan computes a queue's mirror set under e (nil: not mirrored) in group
// g, given its current mirrors and which of them are synced.
//
//   - all: every member but the master.
//   - exactly: Count-1 mirrors (all there are, when fewer). Current mirrors
//     stay; when there are too many, synced ones are kept first, then the
//     oldest; missing ones are the oldest other members.
//   - nodes: the listed nodes that are members; the master holds the queue
//     whether listed or not, and listed nodes that are not members are
//     skipped until they join.
func Plan(e *Effective, g Group, current, synced []string) Change {
	others := othersByAge(g)
	var mirrors []string
	if e != nil {
		switch e.Mode {
		case ModeAll:
			mirrors = others
		case ModeNodes:
			for _, n := range others {
				if slices.Contains(e.Nodes, n) {
					mirrors = append(mirrors, n)
				}
			}
		case ModeExactly:
			mirrors = pickExactly(others, max(e.Count-1, 0), current, synced)
		}
	}
	c := Change{Mirrors: mirrors}
	for _, n := range mirrors {
		if !slices.Contains(current, n) {
			c.Added = append(c.Added, n)
		}
	}
	for _, n := range current {
		if n != g.Master && !slices.Contains(mirrors, n) && !slices.Contains(c.Removed, n) {
			c.Removed = append(c.Removed, n)
		}
	}
	return c
}

// othersByAge returns the members but the master, oldest first, each once.
func othersByAge(g Group) []string {
	type aged struct {
		node  string
		epoch uint64
		ring  int
	}
	var ms []aged
	for i, m := range g.Members {
		if m.Node != g.Master && !slices.ContainsFunc(ms, func(a aged) bool { return a.node == m.Node }) {
			ms = append(ms, aged{m.Node, m.JoinEpoch, i})
		}
	}
	slices.SortFunc(ms, func(a, b aged) int {
		return cmp.Or(cmp.Compare(a.epoch, b.epoch), cmp.Compare(a.ring, b.ring))
	})
	out := make([]string, len(ms))
	for i, a := range ms {
		out[i] = a.node
	}
	return out
}

// pickExactly chooses k of others (which are oldest first): current
// mirrors first, synced before unsynced, then the oldest; the result is in
// others' order.
func pickExactly(others []string, k int, current, synced []string) []string {
	k = min(k, len(others))
	rank := func(n string) int {
		switch {
		case slices.Contains(current, n) && slices.Contains(synced, n):
			return 0
		case slices.Contains(current, n):
			return 1
		}
		return 2
	}
	byPref := slices.Clone(others)
	slices.SortStableFunc(byPref, func(a, b string) int { return cmp.Compare(rank(a), rank(b)) })
	chosen := byPref[:k]
	var out []string
	for _, n := range others {
		if slices.Contains(chosen, n) {
			out = append(out, n)
		}
	}
	return out
}
