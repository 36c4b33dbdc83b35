package replicate

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// fromYAML decodes text (JSON is YAML too) the way a config file would be.
func fromYAML(t *testing.T, text string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(text), &m); err != nil {
		t.Fatalf("yaml %s: %v", text, err)
	}
	return m
}

func mustDef(t *testing.T, js string) Definition {
	t.Helper()
	d, err := ParseDefinitionJSON([]byte(js))
	if err != nil {
		t.Fatalf("definition %s: %v", js, err)
	}
	return d
}

func mustPolicy(t *testing.T, vhost, name, pattern string, applyTo ApplyTo, prio int, def string) Policy {
	t.Helper()
	p, err := NewPolicy(vhost, name, pattern, applyTo, prio, mustDef(t, def))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Every validation error, worded with the key and the value given. Each
// case runs from JSON (set_policy) and from the same text decoded as YAML
// (the config file); both must say the same.
func TestDefinitionErrors(t *testing.T) {
	cases := []struct {
		def, key, msg string
	}{
		{`{}`, "definition", `definition is empty: give at least one key, e.g. {"ha-mode":"all"}`},
		{`{"ha-params":2}`, "ha-mode", `ha-mode must be specified to use ha-params 2`},
		{`{"ha-sync-mode":"automatic","ha-promote-on-failure":"always"}`, "ha-mode",
			`ha-mode must be specified to use ha-sync-mode "automatic", ha-promote-on-failure "always"`},
		{`{"ha-sync-batch-size":10}`, "ha-mode", `ha-mode must be specified to use ha-sync-batch-size 10`},
		{`{"ha-mode":"some"}`, "ha-mode", `ha-mode "some" is not valid: use "all", "exactly" or "nodes"`},
		{`{"ha-mode":"ALL"}`, "ha-mode", `ha-mode "ALL" is not valid: use "all", "exactly" or "nodes"`},
		{`{"ha-mode":3}`, "ha-mode", `ha-mode 3 is not valid: use "all", "exactly" or "nodes"`},
		{`{"ha-mode":null}`, "ha-mode", `ha-mode null is not valid: use "all", "exactly" or "nodes"`},
		{`{"ha-mode":"all","ha-params":2}`, "ha-params", `ha-mode "all" takes no ha-params, got ha-params 2`},
		{`{"ha-mode":"exactly"}`, "ha-params",
			`ha-mode "exactly" needs ha-params: a positive integer, the number of copies counting the master`},
		{`{"ha-mode":"exactly","ha-params":0}`, "ha-params", `ha-params must be a positive integer for ha-mode "exactly", got 0`},
		{`{"ha-mode":"exactly","ha-params":-2}`, "ha-params", `ha-params must be a positive integer for ha-mode "exactly", got -2`},
		{`{"ha-mode":"exactly","ha-params":2.0}`, "ha-params", `ha-params must be a positive integer for ha-mode "exactly", got 2.0`},
		{`{"ha-mode":"exactly","ha-params":2.5}`, "ha-params", `ha-params must be a positive integer for ha-mode "exactly", got 2.5`},
		{`{"ha-mode":"exactly","ha-params":"2"}`, "ha-params", `ha-params must be a positive integer for ha-mode "exactly", got "2"`},
		{`{"ha-mode":"exactly","ha-params":[2]}`, "ha-params", `ha-params must be a positive integer for ha-mode "exactly", got [2]`},
		{`{"ha-mode":"nodes"}`, "ha-params", `ha-mode "nodes" needs ha-params: a list of node names`},
		{`{"ha-mode":"nodes","ha-params":"rabbit@a"}`, "ha-params",
			`ha-params must be a list of node names for ha-mode "nodes", got "rabbit@a"`},
		{`{"ha-mode":"nodes","ha-params":[]}`, "ha-params", `ha-params must name at least one node for ha-mode "nodes", got []`},
		{`{"ha-mode":"nodes","ha-params":["a",1]}`, "ha-params",
			`ha-params must hold node names (strings) for ha-mode "nodes", got 1 in ["a",1]`},
		{`{"ha-mode":"all","ha-sync-mode":"auto"}`, "ha-sync-mode", `ha-sync-mode must be "manual" or "automatic", got "auto"`},
		{`{"ha-mode":"all","ha-sync-batch-size":0}`, "ha-sync-batch-size",
			`ha-sync-batch-size must be an integer greater than 0, got 0`},
		{`{"ha-mode":"all","ha-sync-batch-size":"big"}`, "ha-sync-batch-size",
			`ha-sync-batch-size must be an integer greater than 0, got "big"`},
		{`{"ha-mode":"all","ha-promote-on-shutdown":"never"}`, "ha-promote-on-shutdown",
			`ha-promote-on-shutdown must be "always" or "when-synced", got "never"`},
		{`{"ha-mode":"all","ha-promote-on-failure":true}`, "ha-promote-on-failure",
			`ha-promote-on-failure must be "always" or "when-synced", got true`},
		{`{"ha-mode":"all","ha-foo":"x"}`, "ha-foo",
			"ha-foo is not a mirroring setting: the keys are ha-mode, ha-params, ha-sync-mode, ha-sync-batch-size, ha-promote-on-shutdown, ha-promote-on-failure"},
		{`{"HA-Mode":"all"}`, "HA-Mode",
			"HA-Mode is not a mirroring setting: the keys are ha-mode, ha-params, ha-sync-mode, ha-sync-batch-size, ha-promote-on-shutdown, ha-promote-on-failure"},
		// RabbitMQ checks the mode's own keys before it complains about
		// unknown ones; so do we.
		{`{"ha-mode":"exactly","ha-params":0,"ha-x":1}`, "ha-params", `ha-params must be a positive integer for ha-mode "exactly", got 0`},
	}
	for _, c := range cases {
		check := func(t *testing.T, err error) {
			t.Helper()
			var pe *PolicyError
			if !errors.As(err, &pe) || !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("%s: got %v, want a *PolicyError", c.def, err)
			}
			if pe.Key != c.key || err.Error() != c.msg {
				t.Errorf("%s:\n got key %q: %s\nwant key %q: %s", c.def, pe.Key, err, c.key, c.msg)
			}
		}
		t.Run("json "+c.def, func(t *testing.T) {
			_, err := ParseDefinitionJSON([]byte(c.def))
			check(t, err)
		})
		t.Run("yaml "+c.def, func(t *testing.T) {
			_, err := ParseDefinition(fromYAML(t, c.def))
			check(t, err)
		})
	}
}

func TestDefinitionJSONOnlyErrors(t *testing.T) {
	for _, c := range []struct{ def, msg string }{
		{`not json`, "definition is not valid JSON: invalid character 'o' in literal null (expecting 'u')"},
		{`[1]`, "definition must be a JSON object, got [1]"},
		{`"ha-mode"`, `definition must be a JSON object, got "ha-mode"`},
		{`{"ha-mode":"all"} {}`, "definition has more after its JSON object"},
		{``, "definition is not valid JSON: EOF"},
	} {
		_, err := ParseDefinitionJSON([]byte(c.def))
		if err == nil || err.Error() != c.msg || !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("%q: got %v, want %s", c.def, err, c.msg)
		}
	}
}

func TestDefinitionGoValues(t *testing.T) {
	d, err := ParseDefinition(map[string]any{
		"ha-mode": "nodes", "ha-params": []string{"a", "b"}, "ha-sync-batch-size": uint16(7),
		"nested": map[any]any{"k": []any{1.5, int8(-1), nil}}, "f": float32(3),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"f":3.0,"ha-mode":"nodes","ha-params":["a","b"],"ha-sync-batch-size":7,"nested":{"k":[1.5,-1,null]}}`
	if d.String() != want {
		t.Errorf("got %s, want %s", d, want)
	}
	for _, c := range []struct {
		m   map[string]any
		msg string
	}{
		{map[string]any{"x": struct{}{}}, "x: a struct {} value cannot be part of a policy definition"},
		{map[string]any{"x": map[any]any{1: "a"}}, "x: key 1 is not a string"},
		{map[string]any{"x": []any{1, json.Number("1x")}}, `x[1]: "1x" is not a number`},
		{map[string]any{"x": json.Number("true")}, `x: "true" is not a number`},
		{map[string]any{"x": map[string]any{"y": -1 / zero()}}, "x.y: -Inf is not a JSON number"},
	} {
		if _, err := ParseDefinition(c.m); err == nil || err.Error() != c.msg {
			t.Errorf("%v: got %v, want %s", c.m, err, c.msg)
		}
	}
}

func zero() float64 { return 0 }

func TestDefinitionResolved(t *testing.T) {
	cases := []struct {
		def  string
		want HA
	}{
		{`{"ha-mode":"all"}`, HA{Mode: ModeAll, SyncMode: SyncManual, SyncBatchSize: 4096,
			PromoteOnShutdown: PromoteWhenSynced, PromoteOnFailure: PromoteAlways}},
		{`{"ha-mode":"exactly","ha-params":2,"ha-sync-mode":"automatic","ha-sync-batch-size":1}`,
			HA{Mode: ModeExactly, Count: 2, SyncMode: SyncAutomatic, SyncBatchSize: 1,
				PromoteOnShutdown: PromoteWhenSynced, PromoteOnFailure: PromoteAlways}},
		{`{"ha-mode":"nodes","ha-params":["rabbit@b","rabbit@a","rabbit@b"],"ha-promote-on-shutdown":"always","ha-promote-on-failure":"when-synced"}`,
			HA{Mode: ModeNodes, Nodes: []string{"rabbit@b", "rabbit@a", "rabbit@b"}, SyncMode: SyncManual,
				SyncBatchSize: 4096, PromoteOnShutdown: PromoteAlways, PromoteOnFailure: PromoteWhenSynced}},
	}
	for _, c := range cases {
		for _, d := range []Definition{mustDef(t, c.def), must(ParseDefinition(fromYAML(t, c.def)))} {
			got, ok := d.HA()
			if !ok || !equalHA(got, c.want) {
				t.Errorf("%s: got %+v %v, want %+v", c.def, got, ok, c.want)
			}
		}
	}
	// A definition without ha-mode is valid and mirrors nothing; its keys
	// pass through.
	d := mustDef(t, `{"message-ttl":60000,"dead-letter-exchange":"dlx","federation-upstream-set":"all"}`)
	if _, ok := d.HA(); ok {
		t.Error("a definition without ha-mode resolved to mirroring")
	}
	if got := d.Keys(); !slices.Equal(got, []string{"dead-letter-exchange", "federation-upstream-set", "message-ttl"}) {
		t.Errorf("keys %v", got)
	}
	mixed := mustDef(t, `{"ha-mode":"all","message-ttl":1000,"x":{"y":[1]}}`)
	pt := mixed.Passthrough()
	if b, _ := json.Marshal(pt); string(b) != `{"message-ttl":1000,"x":{"y":[1]}}` {
		t.Errorf("passthrough %s", b)
	}
	pt["x"].(map[string]any)["y"].([]any)[0] = "changed"
	if v, _ := mixed.Get("x"); show(v) != `{"y":[1]}` {
		t.Errorf("Passthrough shares the definition's values: %s", show(v))
	}
	keys := HAKeys()
	if !slices.Equal(keys, []string{"ha-mode", "ha-params", "ha-sync-mode", "ha-sync-batch-size",
		"ha-promote-on-shutdown", "ha-promote-on-failure"}) || !IsHAKey("ha-params") || IsHAKey("message-ttl") || IsHAKey("HA-mode") {
		t.Errorf("ha keys %v", keys)
	}
	keys[0] = "changed"
	if IsHAKey("changed") {
		t.Error("HAKeys shares its slice")
	}
	ha, _ := mixed.HA()
	ha.Nodes = append(ha.Nodes, "n")
	if again, _ := mixed.HA(); len(again.Nodes) != 0 {
		t.Error("HA shares its Nodes slice")
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func equalHA(a, b HA) bool {
	return a.Mode == b.Mode && a.Count == b.Count && slices.Equal(a.Nodes, b.Nodes) && a.SyncMode == b.SyncMode &&
		a.SyncBatchSize == b.SyncBatchSize && a.PromoteOnShutdown == b.PromoteOnShutdown && a.PromoteOnFailure == b.PromoteOnFailure
}

// The policies of the seed articles, typed as they printed them.
func TestSeedPolicies(t *testing.T) {
	var ps Policies
	for _, c := range []struct{ name, pattern, def string }{
		{"ha-all2", "^hello.*", `{"ha-mode":"all"}`},
		{"ha-all", "^halo.*", `{"ha-mode":"nodes","ha-params":["rabbit@node1","rabbit@node2"]}`},
	} {
		if err := ps.Set(mustPolicy(t, "", c.name, c.pattern, "", 0, c.def)); err != nil {
			t.Fatal(err)
		}
	}
	if e, ok := ps.Effective("/", "hello-queue", false, nil); !ok || e.Mode != ModeAll || e.Policy != "ha-all2" {
		t.Errorf("hello-queue: %+v %v", e, ok)
	}
	if e, ok := ps.Effective("/", "halo.q", false, nil); !ok || e.Mode != ModeNodes || !slices.Equal(e.Nodes, []string{"rabbit@node1", "rabbit@node2"}) {
		t.Errorf("halo.q: %+v %v", e, ok)
	}
	// The third seed puts the count in a "count" key, which RabbitMQ 3.x
	// refuses; the error says where the number goes.
	_, err := ParseDefinitionJSON([]byte(`{"ha-mode":"exactly","count":2}`))
	want := `ha-mode "exactly" needs ha-params: a positive integer, the number of copies counting the master` +
		` (found "count": 2; the number goes in ha-params, e.g. {"ha-mode":"exactly","ha-params":2})`
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
	// The seeds' legacy arguments.
	args := amqp.Table{{Key: "x-ha-policy", Value: "nodes"}, {Key: "x-ha-policy-params", Value: []any{"rabbit@node1", "rabbit@node2"}}}
	if e, ok := ps.Effective("/", "legacy-queue", false, args); !ok || !e.Legacy || e.Mode != ModeNodes || len(e.Nodes) != 2 {
		t.Errorf("legacy: %+v %v", e, ok)
	}
}

func TestNewPolicy(t *testing.T) {
	def := mustDef(t, `{"ha-mode":"all"}`)
	p, err := NewPolicy("", "p", "^a", "", -3, def)
	if err != nil || p.Vhost != "/" || p.ApplyTo != ApplyToAll || p.Priority != -3 {
		t.Fatalf("defaults: %+v %v", p, err)
	}
	for _, c := range []struct {
		vhost, name, pattern string
		applyTo              ApplyTo
		def                  Definition
		key, msg             string
	}{
		{"/", "p", "[", "", def, "pattern",
			"policy \"p\": pattern \"[\" is not a valid regular expression (Go RE2 syntax: no look-around, no back-references): error parsing regexp: missing closing ]: `[`"},
		{"/", "p", "(?<=a)b", "", def, "pattern",
			"policy \"p\": pattern \"(?<=a)b\" is not a valid regular expression (Go RE2 syntax: no look-around, no back-references): error parsing regexp: invalid named capture: `(?<=a)b`"},
		{"/", "p", "^a", "foo", def, "apply-to", `policy "p": apply-to "foo" is not valid: use "queues", "exchanges" or "all"`},
		{"/", "", "^a", "", def, "name", "policy name is empty"},
		{"/", "p", "^a", "", Definition{}, "definition", `policy "p": definition is empty`},
	} {
		_, err := NewPolicy(c.vhost, c.name, c.pattern, c.applyTo, 0, c.def)
		var pe *PolicyError
		if !errors.As(err, &pe) || pe.Key != c.key || err.Error() != c.msg {
			t.Errorf("got %v, want %s: %s", err, c.key, c.msg)
		}
	}
	var ps Policies
	if err := ps.Set(Policy{Name: "x", Pattern: regexp.MustCompile("a"), ApplyTo: ApplyToAll, Definition: def}); err == nil ||
		err.Error() != `policy "x": vhost is empty` {
		t.Errorf("hand-built policy without vhost: %v", err)
	}
	if err := ps.Set(Policy{Name: "x", Vhost: "/", ApplyTo: ApplyToAll, Definition: def}); err == nil ||
		err.Error() != `policy "x": pattern is missing` {
		t.Errorf("hand-built policy without pattern: %v", err)
	}
	spec := Spec{Name: "s", Pattern: "^", Definition: map[string]any{"ha-mode": "exactly", "ha-params": 0}}
	if _, err := spec.Policy(); err == nil || err.Error() != `policy "s": ha-params must be a positive integer for ha-mode "exactly", got 0` {
		t.Errorf("spec error does not name the policy: %v", err)
	}
}

func TestMatch(t *testing.T) {
	var ps Policies
	set := func(vhost, name, pattern string, applyTo ApplyTo, prio int, def string) {
		t.Helper()
		if err := ps.Set(mustPolicy(t, vhost, name, pattern, applyTo, prio, def)); err != nil {
			t.Fatal(err)
		}
	}
	set("/", "ha-all", "", ApplyToAll, 0, `{"ha-mode":"all"}`)
	set("/", "two", "^two\\.", ApplyToQueues, 1, `{"ha-mode":"exactly","ha-params":2}`)
	set("/", "ttl", "^two\\.ttl", ApplyToQueues, 2, `{"message-ttl":1000}`)
	set("/", "x-only", "^ex", ApplyToExchanges, 9, `{"alternate-exchange":"ae"}`)
	set("/", "tie-a", "^tie", ApplyToAll, 5, `{"ha-mode":"exactly","ha-params":3}`)
	set("/", "tie-b", "^tie", ApplyToQueues, 5, `{"ha-mode":"exactly","ha-params":4}`)
	set("/", "neg", "^neg", ApplyToAll, -1, `{"ha-mode":"nodes","ha-params":["n1"]}`)
	set("other", "o", "^two", ApplyToAll, 100, `{"ha-mode":"nodes","ha-params":["n2"]}`)
	set("/", "mid", "gen", ApplyToAll, 3, `{"ha-mode":"exactly","ha-params":5}`)
	for _, c := range []struct {
		vhost, queue string
		want         string // winning policy, "" for none
	}{
		{"/", "plain", "ha-all"},
		{"/", "two.q", "two"},
		{"/", "two.ttl.q", "ttl"},  // higher priority without ha-mode still wins the match
		{"/", "ex.q", "ha-all"},    // an exchanges-only policy never applies to queues
		{"/", "tie", "tie-b"},      // equal priorities: the name that sorts last
		{"/", "neg.q", "ha-all"},   // 0 outranks -1
		{"/", "a.two.b", "ha-all"}, // anchored pattern
		{"/", "amq.gen-Xy", "mid"}, // server-named queues match like any other
		{"other", "two.q", "o"},    // vhosts are separate
		{"other", "plain", ""},     // no policy in that vhost matches
		{"nosuch", "two.q", ""},    // nor in an unknown vhost
		{"/", "", "ha-all"},        // "" matches the empty pattern
		{"/", "x-two.q", "ha-all"}, // ^ anchors
		{"/", "agent", "mid"},      // unanchored patterns match anywhere
		{"/", "tie-and-gen", "tie-b"},
	} {
		p, ok := ps.Match(c.vhost, c.queue)
		if got := map[bool]string{true: p.Name}[ok]; got != c.want {
			t.Errorf("Match(%q, %q) = %q, want %q", c.vhost, c.queue, got, c.want)
		}
	}
	if p, ok := ps.Get("/", "tie-a"); !ok || p.Priority != 5 {
		t.Errorf("Get: %+v %v", p, ok)
	}
}

func TestEffective(t *testing.T) {
	var ps Policies
	for _, p := range []Policy{
		mustPolicy(t, "/", "ha", "^ha\\.", ApplyToQueues, 0, `{"ha-mode":"exactly","ha-params":2,"ha-sync-mode":"automatic"}`),
		mustPolicy(t, "/", "ttl", "^ttl\\.", ApplyToQueues, 0, `{"message-ttl":5}`),
		mustPolicy(t, "/", "ha-under-ttl", "^ttl\\.", ApplyToQueues, -1, `{"ha-mode":"all"}`),
	} {
		if err := ps.Set(p); err != nil {
			t.Fatal(err)
		}
	}
	legacyAll := amqp.Table{{Key: "x-ha-policy", Value: "all"}}
	legacyNodes := amqp.Table{{Key: "x-ha-policy", Value: "nodes"}, {Key: "x-ha-policy-params", Value: []any{"b", "a"}}}
	broken := amqp.Table{{Key: "x-ha-policy", Value: "nodes"}}
	for _, c := range []struct {
		name      string
		queue     string
		exclusive bool
		args      amqp.Table
		want      *Effective
	}{
		{"policy", "ha.q", false, nil, &Effective{HA: HA{Mode: ModeExactly, Count: 2, SyncMode: SyncAutomatic}, Policy: "ha"}},
		{"exclusive never mirrored", "ha.q", true, nil, nil},
		{"exclusive with legacy args", "plain", true, legacyAll, nil},
		{"server-named never mirrored", "amq.gen-Xy", false, legacyAll, nil},
		{"no policy", "plain", false, nil, nil},
		{"policy wins over legacy", "ha.q", false, legacyAll, &Effective{HA: HA{Mode: ModeExactly, Count: 2, SyncMode: SyncAutomatic}, Policy: "ha"}},
		{"legacy all", "plain", false, legacyAll, &Effective{HA: HA{Mode: ModeAll, SyncMode: SyncManual}, Legacy: true}},
		{"legacy nodes", "plain", false, legacyNodes, &Effective{HA: HA{Mode: ModeNodes, Nodes: []string{"b", "a"}, SyncMode: SyncManual}, Legacy: true}},
		{"malformed legacy mirrors nothing", "plain", false, broken, nil},
		// Only the winning policy counts, as in RabbitMQ: a lower-priority
		// ha policy under a ttl-only one does not mirror...
		{"ha policy shadowed", "ttl.q", false, nil, nil},
		// ...but the winner has no ha-mode, so legacy arguments decide.
		{"legacy under a non-ha policy", "ttl.q", false, legacyAll, &Effective{HA: HA{Mode: ModeAll, SyncMode: SyncManual}, Legacy: true}},
	} {
		got, ok := ps.Effective("/", c.queue, c.exclusive, c.args)
		if ok != (c.want != nil) || ok && (got.Policy != c.want.Policy || got.Legacy != c.want.Legacy || got.Mode != c.want.Mode ||
			got.Count != c.want.Count || !slices.Equal(got.Nodes, c.want.Nodes) || got.SyncMode != c.want.SyncMode ||
			got.SyncBatchSize != 4096 || got.PromoteOnShutdown != PromoteWhenSynced || got.PromoteOnFailure != PromoteAlways) {
			t.Errorf("%s: got %+v %v, want %+v", c.name, got, ok, c.want)
		}
	}
}

func TestLegacyHA(t *testing.T) {
	for _, c := range []struct {
		args    amqp.Table
		ok      bool
		mode    Mode
		nodes   []string
		key, er string
	}{
		{nil, false, "", nil, "", ""},
		{amqp.Table{{Key: "x-ha-policy-params", Value: []any{"a"}}}, false, "", nil, "", ""},
		{amqp.Table{{Key: "x-ha-policy", Value: "all"}, {Key: "x-ha-policy-params", Value: 5}}, true, ModeAll, nil, "", ""},
		{amqp.Table{{Key: "x-ha-policy", Value: "nodes"}, {Key: "x-ha-policy-params", Value: []any{"a", "b"}}}, true, ModeNodes, []string{"a", "b"}, "", ""},
		{amqp.Table{{Key: "x-ha-policy", Value: []byte("all")}}, true, "", nil, "x-ha-policy",
			`x-ha-policy must be a string, "all" or "nodes", got [97 108 108] ([]uint8)`},
		{amqp.Table{{Key: "x-ha-policy", Value: "exactly"}}, true, "", nil, "x-ha-policy",
			`x-ha-policy "exactly" is not valid: use "all" or "nodes" (other modes need a policy)`},
		{amqp.Table{{Key: "x-ha-policy", Value: "nodes"}}, true, "", nil, "x-ha-policy-params",
			`x-ha-policy "nodes" needs x-ha-policy-params: an array of node names`},
		{amqp.Table{{Key: "x-ha-policy", Value: "nodes"}, {Key: "x-ha-policy-params", Value: "a"}}, true, "", nil, "x-ha-policy-params",
			`x-ha-policy-params must be an array of node names, got "a"`},
		{amqp.Table{{Key: "x-ha-policy", Value: "nodes"}, {Key: "x-ha-policy-params", Value: []any{}}}, true, "", nil, "x-ha-policy-params",
			`x-ha-policy-params must name at least one node`},
		{amqp.Table{{Key: "x-ha-policy", Value: "nodes"}, {Key: "x-ha-policy-params", Value: []any{"a", int32(1)}}}, true, "", nil, "x-ha-policy-params",
			`x-ha-policy-params must hold node names (long strings), got 1 (int32)`},
	} {
		ha, ok, err := LegacyHA(c.args)
		if ok != c.ok {
			t.Errorf("%v: ok %v", c.args, ok)
		}
		if c.er != "" {
			var pe *PolicyError
			if !errors.As(err, &pe) || pe.Key != c.key || err.Error() != c.er {
				t.Errorf("%v: got %v, want %s: %s", c.args, err, c.key, c.er)
			}
			continue
		}
		if err != nil || ha.Mode != c.mode || !slices.Equal(ha.Nodes, c.nodes) {
			t.Errorf("%v: got %+v %v", c.args, ha, err)
		}
	}
}

// A group of five: n0 is the master; ages are not ring order.
var group5 = Group{Master: "n0", Members: []Member{
	{"n0", 1}, {"n1", 4}, {"n2", 2}, {"n3", 5}, {"n4", 2},
}}

func eff(t *testing.T, def string) *Effective {
	t.Helper()
	ha, ok := mustDef(t, def).HA()
	if !ok {
		t.Fatalf("%s has no ha-mode", def)
	}
	return &Effective{HA: ha, Policy: "p"}
}

func TestPlan(t *testing.T) {
	for _, c := range []struct {
		name                    string
		e                       *Effective
		g                       Group
		current, synced         []string
		mirrors, added, removed []string
	}{
		{"all, oldest first", eff(t, `{"ha-mode":"all"}`), group5, nil, nil,
			[]string{"n2", "n4", "n1", "n3"}, []string{"n2", "n4", "n1", "n3"}, nil},
		{"all, master alone", eff(t, `{"ha-mode":"all"}`), Group{Master: "m", Members: []Member{{"m", 1}}}, nil, nil, nil, nil, nil},
		{"exactly 1 is the master only", eff(t, `{"ha-mode":"exactly","ha-params":1}`), group5, []string{"n1"}, nil,
			nil, nil, []string{"n1"}},
		{"exactly 3 from scratch takes the oldest", eff(t, `{"ha-mode":"exactly","ha-params":3}`), group5, nil, nil,
			[]string{"n2", "n4"}, []string{"n2", "n4"}, nil},
		{"exactly 3 keeps current mirrors", eff(t, `{"ha-mode":"exactly","ha-params":3}`), group5, []string{"n3"}, nil,
			[]string{"n2", "n3"}, []string{"n2"}, nil},
		{"exactly 2 keeps a synced mirror over older unsynced ones", eff(t, `{"ha-mode":"exactly","ha-params":2}`), group5,
			[]string{"n2", "n1", "n3"}, []string{"n3"}, []string{"n3"}, nil, []string{"n2", "n1"}},
		{"exactly 3 trims to the oldest when none is synced", eff(t, `{"ha-mode":"exactly","ha-params":3}`), group5,
			[]string{"n3", "n1", "n4"}, nil, []string{"n4", "n1"}, nil, []string{"n3"}},
		{"exactly more than members is all", eff(t, `{"ha-mode":"exactly","ha-params":9}`), group5, nil, nil,
			[]string{"n2", "n4", "n1", "n3"}, []string{"n2", "n4", "n1", "n3"}, nil},
		{"exactly drops a mirror that left and replaces it", eff(t, `{"ha-mode":"exactly","ha-params":2}`), group5,
			[]string{"gone"}, []string{"gone"}, []string{"n2"}, []string{"n2"}, []string{"gone"}},
		{"nodes: listed members only, unknown ones skipped", eff(t, `{"ha-mode":"nodes","ha-params":["n3","x","n1","n3"]}`), group5, nil, nil,
			[]string{"n1", "n3"}, []string{"n1", "n3"}, nil},
		{"nodes: the master keeps the queue when listed", eff(t, `{"ha-mode":"nodes","ha-params":["n0","n4"]}`), group5, nil, nil,
			[]string{"n4"}, []string{"n4"}, nil},
		{"nodes: none of them members", eff(t, `{"ha-mode":"nodes","ha-params":["x","y"]}`), group5, []string{"n1"}, nil,
			nil, nil, []string{"n1"}},
		{"not mirrored drops every mirror", nil, group5, []string{"n1", "n2", "n1"}, []string{"n1"},
			nil, nil, []string{"n1", "n2"}},
		{"a mirror promoted to master is not removed", eff(t, `{"ha-mode":"all"}`),
			Group{Master: "n2", Members: []Member{{"n1", 1}, {"n2", 2}}}, []string{"n2", "n1"}, nil, []string{"n1"}, nil, nil},
		{"a member listed twice counts once", eff(t, `{"ha-mode":"all"}`),
			Group{Master: "a", Members: []Member{{"a", 1}, {"b", 3}, {"b", 3}}}, nil, nil, []string{"b"}, []string{"b"}, nil},
		{"equal join epochs go by ring order", eff(t, `{"ha-mode":"exactly","ha-params":2}`),
			Group{Master: "a", Members: []Member{{"a", 1}, {"c", 2}, {"b", 2}}}, nil, nil, []string{"c"}, []string{"c"}, nil},
	} {
		got := Plan(c.e, c.g, c.current, c.synced)
		if !slices.Equal(got.Mirrors, c.mirrors) || !slices.Equal(got.Added, c.added) || !slices.Equal(got.Removed, c.removed) {
			t.Errorf("%s:\n got %+v\nwant mirrors %v added %v removed %v", c.name, got, c.mirrors, c.added, c.removed)
		}
		if got.Changed() != (len(c.added)+len(c.removed) > 0) {
			t.Errorf("%s: Changed() = %v", c.name, got.Changed())
		}
	}
}

// A queue's mirrors as its policy and the group change.
func TestPlanOnPolicyChange(t *testing.T) {
	var ps Policies
	g := Group{Master: "a", Members: []Member{{"a", 1}, {"b", 2}, {"c", 3}}}
	var mirrors, synced []string
	step := func(what string, added, removed, want []string) {
		t.Helper()
		e, _ := ps.Effective("/", "orders", false, nil)
		c := Plan(e, g, mirrors, synced)
		if !slices.Equal(c.Added, added) || !slices.Equal(c.Removed, removed) || !slices.Equal(c.Mirrors, want) {
			t.Fatalf("%s: got %+v, want added %v removed %v mirrors %v", what, c, added, removed, want)
		}
		mirrors = c.Mirrors
		if again := Plan(e, g, mirrors, synced); again.Changed() {
			t.Fatalf("%s: planning again changes %+v", what, again)
		}
	}
	set := func(def string) {
		t.Helper()
		if err := ps.Set(mustPolicy(t, "/", "ha", "^orders$", ApplyToQueues, 0, def)); err != nil {
			t.Fatal(err)
		}
	}
	step("no policy", nil, nil, nil)
	set(`{"ha-mode":"exactly","ha-params":2}`)
	step("exactly 2", []string{"b"}, nil, []string{"b"})
	synced = []string{"b"}
	set(`{"ha-mode":"all"}`)
	step("all", []string{"c"}, nil, []string{"b", "c"})
	set(`{"ha-mode":"nodes","ha-params":["c","d"]}`)
	step("nodes c, d", nil, []string{"b"}, []string{"c"})
	synced = nil
	g.Members = append(g.Members, Member{"d", 4})
	step("d joins", []string{"d"}, nil, []string{"c", "d"})
	g.Members = slices.DeleteFunc(g.Members, func(m Member) bool { return m.Node == "c" })
	step("c leaves", nil, []string{"c"}, []string{"d"})
	if err := ps.Clear("/", "ha"); err != nil {
		t.Fatal(err)
	}
	step("policy cleared", nil, []string{"d"}, nil)
	if err := ps.Clear("/", "ha"); !errors.Is(err, ErrPolicyNotFound) || err.Error() != `no such policy: "ha" in vhost "/"` {
		t.Errorf("clearing twice: %v", err)
	}
}

func TestListOrder(t *testing.T) {
	var ps Policies
	for _, p := range []Policy{
		mustPolicy(t, "/", "zeta", "^q", ApplyToAll, 0, `{"message-ttl":1000}`),
		mustPolicy(t, "/", "alpha", "^q", ApplyToAll, 0, `{"message-ttl":1000}`),
		mustPolicy(t, "/", "hi", "^q", ApplyToAll, 5, `{"message-ttl":5}`),
		mustPolicy(t, "/", "neg", "^q", ApplyToAll, -1, `{"message-ttl":7}`),
		mustPolicy(t, "b", "k", "^q", ApplyToQueues, 1, `{"message-ttl":1000,"ha-mode":"exactly","ha-params":2,"dead-letter-exchange":"<&>"}`),
		mustPolicy(t, "a", "xonly", "^q", ApplyToExchanges, 9, `{"alternate-exchange":"x"}`),
	} {
		if err := ps.Set(p); err != nil {
			t.Fatal(err)
		}
	}
	// Replacing by vhost and name keeps one entry.
	if err := ps.Set(mustPolicy(t, "/", "zeta", "^q", ApplyToAll, 0, `{"message-ttl":1000}`)); err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, p := range ps.List("") {
		rows = append(rows, strings.Join(p.Row(), "\t"))
	}
	want := []string{
		"/\tneg\t^q\tall\t{\"message-ttl\":7}\t-1",
		"/\talpha\t^q\tall\t{\"message-ttl\":1000}\t0",
		"/\tzeta\t^q\tall\t{\"message-ttl\":1000}\t0",
		"/\thi\t^q\tall\t{\"message-ttl\":5}\t5",
		"a\txonly\t^q\texchanges\t{\"alternate-exchange\":\"x\"}\t9",
		"b\tk\t^q\tqueues\t{\"dead-letter-exchange\":\"<&>\",\"ha-mode\":\"exactly\",\"ha-params\":2,\"message-ttl\":1000}\t1",
	}
	if !slices.Equal(rows, want) {
		t.Errorf("List:\n%s\nwant:\n%s", strings.Join(rows, "\n"), strings.Join(want, "\n"))
	}
	if got := ps.List("b"); len(got) != 1 || got[0].Name != "k" {
		t.Errorf("List(b) = %v", got)
	}
	if got := strings.Join(RowHeader(), "\t"); got != "vhost\tname\tpattern\tapply-to\tdefinition\tpriority" {
		t.Errorf("header %q", got)
	}
	// The policy in force is the last matching row; removing it exposes the
	// one before it.
	for _, drop := range []string{"hi", "zeta", "alpha", "neg"} {
		var last string
		for _, p := range ps.List("/") {
			if p.Matches("/", "q1") {
				last = p.Name
			}
		}
		if m, _ := ps.Match("/", "q1"); m.Name != last || last != drop {
			t.Errorf("match %q, last matching row %q, want %q", m.Name, last, drop)
		}
		if err := ps.Clear("/", drop); err != nil {
			t.Fatal(err)
		}
	}
}

func TestJSONRoundTrip(t *testing.T) {
	for _, js := range []string{
		`{"vhost":"/","name":"ha-all","pattern":"^","apply-to":"all","definition":{"ha-mode":"all"},"priority":0}`,
		`{"vhost":"v","name":"two","pattern":"^two\\.<&>","apply-to":"queues","definition":{"ha-mode":"exactly","ha-params":2,"ha-sync-mode":"automatic"},"priority":-4}`,
		`{"vhost":"/","name":"n","pattern":"","apply-to":"exchanges","definition":{"f":2.0,"g":1e3,"ha-mode":"nodes","ha-params":["rabbit@é","b"],"m":{"a":[null,true]}},"priority":7}`,
	} {
		var p Policy
		if err := json.Unmarshal([]byte(js), &p); err != nil {
			t.Fatalf("%s: %v", js, err)
		}
		out, err := p.MarshalJSON()
		if err != nil || string(out) != js {
			t.Errorf("round trip:\n got %s %v\nwant %s", out, err, js)
		}
		// encoding/json escapes HTML in a Marshaler's output; the result
		// still reads back the same.
		var back Policy
		if err := json.Unmarshal(must(json.Marshal(p)), &back); err != nil || must(back.MarshalJSON()) == nil ||
			string(must(back.MarshalJSON())) != js {
			t.Errorf("through json.Marshal: %v", err)
		}
		d2, err := ParseDefinitionJSON([]byte(p.Definition.String()))
		if err != nil || !d2.Equal(p.Definition) {
			t.Errorf("definition round trip %s: %v", p.Definition, err)
		}
	}
	// Defaults and errors of the JSON form.
	var p Policy
	if err := json.Unmarshal([]byte(`{"name":"d","pattern":"x","definition":{"ha-mode":"all"}}`), &p); err != nil ||
		p.Vhost != "/" || p.ApplyTo != ApplyToAll || p.Priority != 0 {
		t.Errorf("defaults: %+v %v", p, err)
	}
	for _, c := range []struct{ js, msg string }{
		{`{"name":"d","definition":{"ha-mode":"all"}}`, `policy "d": pattern is missing`},
		{`{"name":"d","pattern":"x"}`, `policy "d": definition is missing`},
		{`{"name":"d","pattern":"x","definition":{"ha-mode":"all"},"priority":1.5}`, `policy "d": priority must be an integer, got 1.5`},
		{`{"name":"d","pattern":"x","definition":{"ha-mode":"all","ha-params":1}}`, `policy "d": ha-mode "all" takes no ha-params, got ha-params 1`},
		{`{"name":"d","pattern":"x","definition":{"ha-mode":"all"},"apply-to":"both"}`, `policy "d": apply-to "both" is not valid: use "queues", "exchanges" or "all"`},
		{`{"name":`, `policy is not valid JSON: unexpected EOF`},
	} {
		var p Policy
		err := p.UnmarshalJSON([]byte(c.js))
		if err == nil || err.Error() != c.msg || !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("%s: got %v, want %s", c.js, err, c.msg)
		}
	}
	var d Definition
	if err := json.Unmarshal([]byte(`{"ha-mode":"exactly","ha-params":3}`), &d); err != nil {
		t.Fatal(err)
	}
	if ha, ok := d.HA(); !ok || ha.Count != 3 {
		t.Errorf("Definition.UnmarshalJSON: %+v", ha)
	}
	if b, _ := json.Marshal(Definition{}); string(b) != "{}" {
		t.Errorf("zero definition marshals as %s", b)
	}
}

// Policies as a config file would hold them.
func TestSpecFromYAML(t *testing.T) {
	const doc = `
- name: ha-two
  vhost: /
  pattern: ^two\.
  apply-to: queues
  priority: 1
  definition:
    ha-mode: exactly
    ha-params: 2
    ha-sync-mode: automatic
    message-ttl: 60000
- name: ha-nodes
  pattern: ^nodes\.
  definition: {ha-mode: nodes, ha-params: [rabbit@a, rabbit@b]}
`
	var specs []Spec
	if err := yaml.Unmarshal([]byte(doc), &specs); err != nil {
		t.Fatal(err)
	}
	var ps Policies
	for _, s := range specs {
		p, err := s.Policy()
		if err != nil {
			t.Fatal(err)
		}
		if err := ps.Set(p); err != nil {
			t.Fatal(err)
		}
	}
	e, ok := ps.Effective("/", "two.q", false, nil)
	if !ok || e.Count != 2 || e.SyncMode != SyncAutomatic || e.Policy != "ha-two" {
		t.Errorf("two.q: %+v", e)
	}
	p, _ := ps.Get("/", "ha-two")
	if got := p.Definition.String(); got != `{"ha-mode":"exactly","ha-params":2,"ha-sync-mode":"automatic","message-ttl":60000}` {
		t.Errorf("definition %s", got)
	}
	if p, ok := ps.Get("/", "ha-nodes"); !ok || p.ApplyTo != ApplyToAll {
		t.Errorf("defaults from YAML: %+v", p)
	}
}

// Readers and writers at once (run with -race).
func TestPoliciesConcurrent(t *testing.T) {
	defer goleak.VerifyNone(t)
	var ps Policies
	def := mustDef(t, `{"ha-mode":"all"}`)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				name := fmt.Sprintf("p%d-%d", w, i%5)
				p := Policy{Vhost: "/", Name: name, Pattern: regexp.MustCompile("^q"), ApplyTo: ApplyToAll, Priority: i % 3, Definition: def}
				if err := ps.Set(p); err != nil {
					t.Error(err)
					return
				}
				ps.Effective("/", "q1", false, nil)
				ps.List("")
				_ = ps.Clear("/", name)
			}
		}()
	}
	wg.Wait()
	if n := len(ps.List("")); n != 0 {
		t.Errorf("%d policies left", n)
	}
}

// The naive model (STYLE.md): random policies, queues and groups over many
// seeds, resolved and placed by brute force with no shared code, must agree
// with Policies and Plan.

type modelPolicy struct {
	vhost, name, pattern string
	applyTo              ApplyTo
	prio                 int
	ha                   *HA // nil: the definition has no ha-mode
	def                  string
}

var (
	modelPatterns = []string{"", "^q", "q$", `^q\.`, "a|b", `^amq\.gen-`, "[0-9]", "^q1$", "x.*y", "^$"}
	modelNames    = []string{"a", "b", "c", "ha", "zz", "p1"}
	modelNodes    = []string{"n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7"}
)

func randomModelPolicy(r *rand.Rand) modelPolicy {
	p := modelPolicy{
		vhost:   []string{"/", "v"}[r.IntN(2)],
		name:    modelNames[r.IntN(len(modelNames))],
		pattern: modelPatterns[r.IntN(len(modelPatterns))],
		applyTo: []ApplyTo{ApplyToQueues, ApplyToExchanges, ApplyToAll}[r.IntN(3)],
		prio:    r.IntN(5) - 2,
	}
	keys := map[string]string{}
	if r.IntN(4) > 0 {
		ha := HA{SyncMode: SyncManual, SyncBatchSize: 4096, PromoteOnShutdown: PromoteWhenSynced, PromoteOnFailure: PromoteAlways}
		switch r.IntN(3) {
		case 0:
			ha.Mode, keys["ha-mode"] = ModeAll, `"all"`
		case 1:
			ha.Mode, ha.Count = ModeExactly, 1+r.IntN(7)
			keys["ha-mode"], keys["ha-params"] = `"exactly"`, fmt.Sprint(ha.Count)
		case 2:
			ha.Mode = ModeNodes
			for range 1 + r.IntN(4) {
				ha.Nodes = append(ha.Nodes, modelNodes[r.IntN(len(modelNodes))]+"x"[:r.IntN(4)/3])
			}
			keys["ha-mode"], keys["ha-params"] = `"nodes"`, `["`+strings.Join(ha.Nodes, `","`)+`"]`
		}
		if r.IntN(2) == 0 {
			ha.SyncMode, keys["ha-sync-mode"] = SyncAutomatic, `"automatic"`
		}
		if r.IntN(3) == 0 {
			ha.SyncBatchSize = 1 + r.IntN(100)
			keys["ha-sync-batch-size"] = fmt.Sprint(ha.SyncBatchSize)
		}
		if r.IntN(3) == 0 {
			ha.PromoteOnShutdown, keys["ha-promote-on-shutdown"] = PromoteAlways, `"always"`
		}
		if r.IntN(3) == 0 {
			ha.PromoteOnFailure, keys["ha-promote-on-failure"] = PromoteWhenSynced, `"when-synced"`
		}
		p.ha = &ha
	}
	if len(keys) == 0 || r.IntN(2) == 0 {
		keys["message-ttl"] = fmt.Sprint(r.IntN(1000))
	}
	var parts []string
	for k, v := range keys {
		parts = append(parts, fmt.Sprintf("%q:%s", k, v))
	}
	p.def = "{" + strings.Join(parts, ",") + "}"
	return p
}

func randomQueueName(r *rand.Rand) string {
	if r.IntN(5) == 0 {
		return "amq.gen-" + fmt.Sprint(r.IntN(100))
	}
	const alphabet = "qab1.xy-"
	var b strings.Builder
	for range r.IntN(5) {
		b.WriteByte(alphabet[r.IntN(len(alphabet))])
	}
	return b.String()
}

type modelLegacy struct {
	args amqp.Table
	ha   *HA // nil when the arguments mirror nothing
}

func randomLegacy(r *rand.Rand) modelLegacy {
	def := HA{SyncMode: SyncManual, SyncBatchSize: 4096, PromoteOnShutdown: PromoteWhenSynced, PromoteOnFailure: PromoteAlways}
	switch r.IntN(5) {
	case 0:
		ha := def
		ha.Mode = ModeAll
		return modelLegacy{amqp.Table{{Key: "x-ha-policy", Value: "all"}}, &ha}
	case 1:
		ha := def
		ha.Mode, ha.Nodes = ModeNodes, []string{modelNodes[r.IntN(8)], modelNodes[r.IntN(8)]}
		return modelLegacy{amqp.Table{{Key: "x-ha-policy", Value: "nodes"}, {Key: "x-ha-policy-params", Value: []any{ha.Nodes[0], ha.Nodes[1]}}}, &ha}
	case 2:
		return modelLegacy{amqp.Table{{Key: "x-ha-policy", Value: "nodes"}}, nil}
	case 3:
		return modelLegacy{amqp.Table{{Key: "x-ha-policy", Value: "exactly"}, {Key: "x-message-ttl", Value: int32(5)}}, nil}
	}
	return modelLegacy{nil, nil}
}

// modelEffective is the brute-force resolver.
func modelEffective(ps map[[2]string]modelPolicy, vhost, queue string, exclusive bool, legacy modelLegacy) (string, *HA) {
	if exclusive || strings.HasPrefix(queue, "amq.") {
		return "", nil
	}
	var matching []modelPolicy
	for _, p := range ps {
		if p.vhost == vhost && p.applyTo != ApplyToExchanges && regexp.MustCompile(p.pattern).MatchString(queue) {
			matching = append(matching, p)
		}
	}
	slices.SortFunc(matching, func(a, b modelPolicy) int {
		if a.prio != b.prio {
			return b.prio - a.prio
		}
		return strings.Compare(b.name, a.name)
	})
	if len(matching) > 0 && matching[0].ha != nil {
		return matching[0].name, matching[0].ha
	}
	if legacy.ha != nil {
		return "", legacy.ha
	}
	return "", nil
}

func TestNaiveModelResolve(t *testing.T) {
	for seed := range uint64(400) {
		r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
		var ps Policies
		model := map[[2]string]modelPolicy{}
		for range r.IntN(12) {
			if r.IntN(5) == 0 && len(model) > 0 {
				vhost, name := []string{"/", "v"}[r.IntN(2)], modelNames[r.IntN(len(modelNames))]
				_, had := model[[2]string{vhost, name}]
				if err := ps.Clear(vhost, name); (err == nil) != had {
					t.Fatalf("seed %d: Clear(%s, %s) = %v, model had it: %v", seed, vhost, name, err, had)
				}
				delete(model, [2]string{vhost, name})
				continue
			}
			mp := randomModelPolicy(r)
			p, err := NewPolicy(mp.vhost, mp.name, mp.pattern, mp.applyTo, mp.prio, mustDef(t, mp.def))
			if err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
			if err := ps.Set(p); err != nil {
				t.Fatal(err)
			}
			model[[2]string{mp.vhost, mp.name}] = mp
		}
		if len(ps.List("")) != len(model) {
			t.Fatalf("seed %d: %d policies, model has %d", seed, len(ps.List("")), len(model))
		}
		for range 30 {
			vhost := []string{"/", "v", "w"}[r.IntN(3)]
			queue := randomQueueName(r)
			exclusive := r.IntN(5) == 0
			legacy := randomLegacy(r)
			wantName, want := modelEffective(model, vhost, queue, exclusive, legacy)
			got, ok := ps.Effective(vhost, queue, exclusive, legacy.args)
			if ok != (want != nil) {
				t.Fatalf("seed %d: Effective(%q, %q, %v, %v) = %+v %v, model %s %+v", seed, vhost, queue, exclusive, legacy.args, got, ok, wantName, want)
			}
			if ok && (got.Policy != wantName || got.Legacy != (wantName == "") || !equalHA(got.HA, *want)) {
				t.Fatalf("seed %d: Effective(%q, %q) = %+v, model %q %+v", seed, vhost, queue, got, wantName, *want)
			}
		}
	}
}

// modelPlan places by exhaustive search over every subset of the other
// members, with the preferences written as an order: keep the most current
// mirrors, then the most synced ones, then the oldest members.
func modelPlan(e *Effective, g Group, current, synced []string) []string {
	type cand struct {
		node string
		rank int // members strictly older (join epoch, then ring position)
	}
	var others []cand
	seen := map[string]bool{g.Master: true}
	for i, m := range g.Members {
		if seen[m.Node] {
			continue
		}
		seen[m.Node] = true
		rank := 0
		for j, o := range g.Members {
			if o.Node != g.Master && o.Node != m.Node && slices.IndexFunc(g.Members, func(x Member) bool { return x.Node == o.Node }) == j &&
				(o.JoinEpoch < m.JoinEpoch || o.JoinEpoch == m.JoinEpoch && j < i) {
				rank++
			}
		}
		others = append(others, cand{m.Node, rank})
	}
	slices.SortFunc(others, func(a, b cand) int { return a.rank - b.rank })
	keep := func(f func(string) bool) []string {
		var out []string
		for _, c := range others {
			if f(c.node) {
				out = append(out, c.node)
			}
		}
		return out
	}
	if e == nil {
		return nil
	}
	switch e.Mode {
	case ModeAll:
		return keep(func(string) bool { return true })
	case ModeNodes:
		return keep(func(n string) bool { return slices.Contains(e.Nodes, n) })
	}
	k := min(e.Count-1, len(others))
	var best []int
	var bestScore []int
	for mask := 0; mask < 1<<len(others); mask++ {
		var idx []int
		for i := range others {
			if mask&(1<<i) != 0 {
				idx = append(idx, i)
			}
		}
		if len(idx) != k {
			continue
		}
		kept, keptSynced := 0, 0
		for _, i := range idx {
			if slices.Contains(current, others[i].node) {
				kept++
				if slices.Contains(synced, others[i].node) {
					keptSynced++
				}
			}
		}
		score := append([]int{-kept, -keptSynced}, idx...) // idx is ascending rank
		if best == nil || slices.Compare(score, bestScore) < 0 {
			best, bestScore = idx, score
		}
	}
	var out []string
	for _, i := range best {
		out = append(out, others[i].node)
	}
	return out
}

func TestNaiveModelPlan(t *testing.T) {
	for seed := range uint64(2000) {
		r := rand.New(rand.NewPCG(seed, 42))
		nodes := slices.Clone(modelNodes)
		r.Shuffle(len(nodes), func(i, j int) { nodes[i], nodes[j] = nodes[j], nodes[i] })
		var g Group
		for _, n := range nodes[:1+r.IntN(6)] {
			g.Members = append(g.Members, Member{n, uint64(1 + r.IntN(3))})
		}
		if r.IntN(10) == 0 { // a duplicate entry
			g.Members = append(g.Members, g.Members[r.IntN(len(g.Members))])
		}
		g.Master = g.Members[r.IntN(len(g.Members))].Node
		var current, synced []string
		for _, n := range modelNodes {
			if r.IntN(3) == 0 {
				current = append(current, n)
				if r.IntN(2) == 0 {
					synced = append(synced, n)
				}
			}
		}
		var e *Effective
		switch r.IntN(4) {
		case 1:
			e = &Effective{HA: HA{Mode: ModeAll}}
		case 2:
			e = &Effective{HA: HA{Mode: ModeExactly, Count: 1 + r.IntN(8)}}
		case 3:
			e = &Effective{HA: HA{Mode: ModeNodes, Nodes: []string{modelNodes[r.IntN(8)], modelNodes[r.IntN(8)], "zz"}}}
		}
		c := Plan(e, g, current, synced)
		want := modelPlan(e, g, current, synced)
		if !slices.Equal(c.Mirrors, want) {
			t.Fatalf("seed %d: Plan(%+v, %+v, current %v, synced %v) = %v, model %v", seed, e, g, current, synced, c.Mirrors, want)
		}
		var added, removed []string
		for _, n := range want {
			if !slices.Contains(current, n) {
				added = append(added, n)
			}
		}
		for _, n := range current { // current has no duplicates here
			if n != g.Master && !slices.Contains(want, n) {
				removed = append(removed, n)
			}
		}
		if !slices.Equal(c.Added, added) || !slices.Equal(c.Removed, removed) {
			t.Fatalf("seed %d: added %v removed %v, model %v %v", seed, c.Added, c.Removed, added, removed)
		}
		if slices.Contains(c.Mirrors, g.Master) {
			t.Fatalf("seed %d: master %s among mirrors %v", seed, g.Master, c.Mirrors)
		}
		if again := Plan(e, g, c.Mirrors, synced); again.Changed() || !slices.Equal(again.Mirrors, c.Mirrors) {
			t.Fatalf("seed %d: not stable: %+v then %+v", seed, c, again)
		}
	}
}

func ExamplePolicies_Effective() {
	var ps Policies
	def, err := ParseDefinitionJSON([]byte(`{"ha-mode":"exactly","ha-params":2,"ha-sync-mode":"automatic"}`))
	if err != nil {
		panic(err)
	}
	p, err := NewPolicy("/", "ha-two", `^two\.`, ApplyToQueues, 0, def)
	if err != nil {
		panic(err)
	}
	if err := ps.Set(p); err != nil {
		panic(err)
	}
	e, ok := ps.Effective("/", "two.orders", false, nil)
	fmt.Println(ok, e.Policy, e.Mode, e.Count, e.SyncMode, e.SyncBatchSize, e.PromoteOnShutdown, e.PromoteOnFailure)

	g := Group{Master: "a", Members: []Member{{"a", 1}, {"c", 3}, {"b", 2}}}
	c := Plan(e, g, nil, nil)
	fmt.Println("mirrors", c.Mirrors, "added", c.Added)

	_, ok = ps.Effective("/", "two.orders", true, nil)
	fmt.Println("exclusive mirrored:", ok)
	// Output:
	// true ha-two exactly 2 automatic 4096 when-synced always
	// mirrors [b] added [b]
	// exclusive mirrored: false
}
