package config

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/proxy"
)

// data returns c without its bookkeeping, for comparing values.
func data(c *Config) Config {
	d := *c
	d.File, d.where, d.failed, d.decodeErrs = "", nil, nil, nil
	return d
}

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("defaults do not validate:\n%v", err)
	}
}

// The example file documents the defaults: it must say exactly what Default
// says, and pass the check.
func TestExampleFileIsTheDefaults(t *testing.T) {
	c, err := Load("../../../config.example.yaml")
	if err != nil {
		t.Fatalf("config.example.yaml:\n%v", err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("config.example.yaml does not validate:\n%v", err)
	}
	if got, want := data(c), data(Default()); !reflect.DeepEqual(got, want) {
		t.Errorf("config.example.yaml differs from Default():\n got %+v\nwant %+v", got, want)
	}
	// Every key the decoder knows appears in the example.
	for _, key := range allKeys(reflect.TypeFor[Config](), "") {
		if _, ok := c.where[key]; !ok {
			t.Errorf("config.example.yaml does not show key %s", key)
		}
	}
}

func allKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for name, i := range fieldsByKey(t) {
		keys = append(keys, prefix+name)
		if ft := t.Field(i).Type; isSection(ft) {
			keys = append(keys, allKeys(ft, prefix+name+".")...)
		}
	}
	return keys
}

func TestGoodFile(t *testing.T) {
	c, err := Load("testdata/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	want := Config{
		Listen:   Listen{Address: ":5672"},
		Upstream: Upstream{Address: "broker.internal:5671", DialTimeout: 2 * time.Second, ProxyProtocol: "v2"},
		ProxyProtocol: ProxyProtocol{
			Mode: "required",
			Trusted: []netip.Prefix{
				netip.MustParsePrefix("10.0.0.0/8"),
				netip.MustParsePrefix("192.168.1.10/32"),
				netip.MustParsePrefix("2001:db8::/32"),
			},
			HeaderTimeout: 3 * time.Second,
		},
		Limits: Limits{
			HandshakeTimeout:  15 * time.Second,
			Heartbeat:         20 * time.Second,
			UpstreamHeartbeat: 10 * time.Second,
			FrameMax:          65536,
			ChannelMax:        512,
			MaxUnconfirmed:    64 << 20,
		},
		ShutdownGrace: time.Minute,
		Log:           Log{Level: "debug", Format: "json"},
		GM:            Default().GM,
		Raft:          Default().Raft,
		Admin:         Default().Admin,
		TLS:           Default().TLS,
	}
	if got := data(c); !reflect.DeepEqual(got, want) {
		t.Fatalf("decoded\n %+v\nwant\n %+v", got, want)
	}
	if c.File != "testdata/good.yaml" {
		t.Errorf("File = %q", c.File)
	}

	log := zerolog.Nop()
	o := c.Options(log)
	wantOpts := proxy.Options{
		Upstream:           "broker.internal:5671",
		DialTimeout:        2 * time.Second,
		HandshakeTimeout:   15 * time.Second,
		Heartbeat:          20 * time.Second,
		UpstreamHeartbeat:  10 * time.Second,
		FrameMax:           65536,
		ChannelMax:         512,
		MaxUnconfirmed:     64 << 20,
		ProxyProtocol:      proxy.ProxyProtocolRequired,
		TrustedProxies:     want.ProxyProtocol.Trusted,
		ProxyHeaderTimeout: 3 * time.Second,
		SendProxyProtocol:  "v2",
		ShutdownGrace:      time.Minute,
		Logger:             log,
	}
	if !reflect.DeepEqual(o, wantOpts) {
		t.Errorf("Options\n %+v\nwant\n %+v", o, wantOpts)
	}
	if Default().Options(log).SendProxyProtocol != "" {
		t.Error(`upstream.proxy_protocol "off" must become SendProxyProtocol ""`)
	}
}

// TestBadValues: every kind of bad input gives errors naming the file line
// and the key. Each case is the whole message list, in file order.
func TestBadValues(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"duration without unit", "limits:\n  heartbeat: 30\n",
			[]string{`c.yaml:2: limits.heartbeat: "30" is not a duration: add a unit, e.g. 30s`}},
		{"bad duration", "limits:\n  # comment\n  heartbeat: 5x\n",
			[]string{`c.yaml:3: limits.heartbeat: "5x" is not a duration (a number with a unit: 500ms, 5s, 1m)`}},
		{"heartbeat under a second", "limits:\n  heartbeat: 500ms\n",
			[]string{`c.yaml:2: limits.heartbeat: 500ms is less than 1s (AMQP heartbeats are whole seconds; the proxy needs them on)`}},
		{"heartbeat fraction", "limits:\n  upstream_heartbeat: 1500ms\n",
			[]string{`c.yaml:2: limits.upstream_heartbeat: 1.5s is not a whole number of seconds, as AMQP heartbeats are`}},
		{"heartbeat too long", "limits:\n  heartbeat: 20h\n",
			[]string{`c.yaml:2: limits.heartbeat: 20h0m0s is more than AMQP's largest heartbeat, 18h12m15s`}},
		{"frame_max small", "limits:\n  frame_max: 100\n",
			[]string{`c.yaml:2: limits.frame_max: 100 is below AMQP's minimum frame size 4096`}},
		{"frame_max negative", "limits:\n  frame_max: -1\n",
			[]string{`c.yaml:2: limits.frame_max: "-1" is not a whole number from 0 to 4294967295`}},
		{"channel_max too big", "limits:\n  channel_max: 70000\n",
			[]string{`c.yaml:2: limits.channel_max: "70000" is not a whole number from 0 to 65535`}},
		{"bad size", "limits:\n  max_unconfirmed: 16XB\n",
			[]string{`c.yaml:2: limits.max_unconfirmed: "16XB" is not a size (bytes, or a whole number with KiB, MiB, GiB, KB, MB, GB)`}},
		{"zero size", "limits:\n  max_unconfirmed: 0\n",
			[]string{`c.yaml:2: limits.max_unconfirmed: 0 must be more than 0`}},
		{"listen not host:port", "listen:\n  address: 5673\n",
			[]string{`c.yaml:2: listen.address: "5673" is not host:port (e.g. 127.0.0.1:5672, [::1]:5672, :5672)`}},
		{"listen bad port", "listen:\n  address: localhost:amqp\n",
			[]string{`c.yaml:2: listen.address: "localhost:amqp": port "amqp" is not a number from 0 to 65535`}},
		{"upstream without host", "upstream:\n  address: :5672\n",
			[]string{`c.yaml:2: upstream.address: ":5672" has no host`}},
		{"upstream port 0", "upstream:\n  address: broker:0\n",
			[]string{`c.yaml:2: upstream.address: "broker:0": port 0 cannot be connected to`}},
		{"upstream zero dial timeout", "upstream:\n  dial_timeout: 0s\n",
			[]string{`c.yaml:2: upstream.dial_timeout: 0s must be more than 0`}},
		{"send proxy protocol", "upstream:\n  proxy_protocol: v3\n",
			[]string{`c.yaml:2: upstream.proxy_protocol: "v3" is not one of off, v1, v2`}},
		{"mode", "proxy_protocol:\n  mode: sometimes\n",
			[]string{`c.yaml:2: proxy_protocol.mode: "sometimes" is not one of off, optional, required`}},
		{"required trusts nobody", "proxy_protocol:\n  mode: required\n",
			[]string{`c.yaml:2: proxy_protocol.mode: "required" with no proxy_protocol.trusted addresses trusts nobody, so every connection would be refused; list the load balancers' addresses or set mode: off`}},
		{"bad prefix", "proxy_protocol:\n  mode: optional\n  trusted:\n    - 10.0.0.0/8\n    - 10.0.0/8\n",
			[]string{`c.yaml:5: proxy_protocol.trusted[1]: "10.0.0/8" is not an IP address or CIDR prefix such as 10.0.0.0/8 or 2001:db8::/32`}},
		{"prefix host bits", "proxy_protocol:\n  mode: optional\n  trusted: [10.1.2.3/8]\n",
			[]string{`c.yaml:3: proxy_protocol.trusted[0]: "10.1.2.3/8" has host bits set; did you mean 10.0.0.0/8?`}},
		{"trusted not a list", "proxy_protocol:\n  trusted:\n    a: b\n",
			[]string{`c.yaml:3: proxy_protocol.trusted: must be a list of addresses or CIDR prefixes, not a section`}},
		{"header timeout over handshake", "proxy_protocol:\n  mode: optional\n  trusted: [10.0.0.1]\n  header_timeout: 20s\n",
			[]string{`c.yaml:4: proxy_protocol.header_timeout: proxy_protocol.header_timeout 20s is longer than limits.handshake_timeout 10s, which includes the PROXY header`}},
		{"handshake under default header timeout", "proxy_protocol:\n  mode: optional\n  trusted: [10.0.0.1]\nlimits:\n  handshake_timeout: 2s\n",
			[]string{`c.yaml:5: limits.handshake_timeout: proxy_protocol.header_timeout 5s is longer than limits.handshake_timeout 2s, which includes the PROXY header`}},
		{"shutdown grace", "shutdown_grace: 0s\n",
			[]string{`c.yaml:1: shutdown_grace: 0s must be more than 0`}},
		{"log level", "log:\n  level: verbose\n",
			[]string{`c.yaml:2: log.level: "verbose" is not one of trace, debug, info, warn, error`}},
		{"log format", "log:\n  format: xml\n",
			[]string{`c.yaml:2: log.format: "xml" is not one of json, console, auto`}},
		{"unknown top-level key", "listn:\n  address: :5672\n",
			[]string{`c.yaml:1: listn: unknown key (known here: admin, broker, gm, limits, listen, log, node, peers, policies, proxy_protocol, raft, shutdown_grace, tls, upstream)`}},
		{"unknown nested key", "limits:\n  heartbeet: 5s\n",
			[]string{`c.yaml:2: limits.heartbeet: unknown key (known here: channel_max, frame_max, handshake_timeout, heartbeat, max_unconfirmed, upstream_heartbeat)`}},
		{"admin unknown key", "log:\n  level: info\nadmin:\n  listen: 127.0.0.1:15680\n",
			[]string{`c.yaml:4: admin.listen: unknown key (known here: address, token)`}},
		{"duplicate key", "log:\n  level: info\n  level: debug\n",
			[]string{`c.yaml:3: log.level: given twice (first at line 2)`}},
		{"section given a value", "limits: 5\n",
			[]string{`c.yaml:1: limits: must be a section (indented key: value lines), not "5"`}},
		{"value given a section", "shutdown_grace:\n  a: b\n",
			[]string{`c.yaml:2: shutdown_grace: must be a single value, not a section`}},
		{"value given a list", "log:\n  level: [info]\n",
			[]string{`c.yaml:2: log.level: must be a single value, not a list`}},
		{"syntax error", "log:\n  level: info\n   format: json\n",
			[]string{`c.yaml:3: mapping values are not allowed in this context`}},
		{"not a mapping", "- listen\n",
			[]string{`c.yaml:1: the config must be a mapping of sections (key: value lines), not a list`}},
		{"two documents", "log:\n  level: info\n---\nlog:\n  level: debug\n",
			[]string{`c.yaml:3: a second YAML document (after ---); the config is one document`}},
		//nolint:misspell // "adress" is the misspelt key under test
		{"several problems in file order", "shutdown_grace: soon\nlog:\n  format: xml\n  level: loud\nlisten:\n  adress: x\n",
			[]string{
				`c.yaml:1: shutdown_grace: "soon" is not a duration (a number with a unit: 500ms, 5s, 1m)`,
				`c.yaml:3: log.format: "xml" is not one of json, console, auto`,
				`c.yaml:4: log.level: "loud" is not one of trace, debug, info, warn, error`,
				`c.yaml:6: listen.adress: unknown key (known here: address)`,
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := checkErrors(t, "c.yaml", tc.yaml)
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("errors:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

// checkErrors parses and validates like `config check`, returning each
// message.
func checkErrors(t *testing.T, name, text string) []string {
	t.Helper()
	c, perr := Parse(name, []byte(text))
	var pes, es Errors
	if perr != nil && !errors.As(perr, &pes) {
		t.Fatalf("Parse error %v is %T, not Errors", perr, perr)
	}
	if err := c.Validate(); err != nil && !errors.As(err, &es) {
		t.Fatalf("Validate error %v is %T, not Errors", err, err)
	}
	// Validate repeats every decoding problem.
	for _, pe := range pes {
		found := false
		for _, e := range es {
			found = found || e == pe
		}
		if !found {
			t.Errorf("Validate did not repeat the decoding problem %q", pe)
		}
	}
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Error()
	}
	return out
}

func TestQuirksOfYAML(t *testing.T) {
	// "off" stays the word off (YAML 1.1 would make it a boolean), null keeps
	// the default, anchors and aliases work, an empty file is all defaults.
	c, err := Parse("q.yaml", []byte(`
timeouts: &t 7s
upstream:
  proxy_protocol: off
  dial_timeout: *t
proxy_protocol:
  mode: "off"
listen:
  address: ~
log:
`))
	if err == nil || !strings.Contains(err.Error(), "q.yaml:2: timeouts: unknown key") {
		t.Fatalf("want only the unknown key, got %v", err)
	}
	if c.Upstream.ProxyProtocol != "off" || c.ProxyProtocol.Mode != "off" ||
		c.Upstream.DialTimeout != 7*time.Second || c.Listen.Address != DefaultListen || c.Log != Default().Log {
		t.Errorf("decoded %+v", data(c))
	}
	for _, empty := range []string{"", "# nothing\n", "---\n"} {
		c, err := Parse("e.yaml", []byte(empty))
		if err != nil || !reflect.DeepEqual(data(c), data(Default())) {
			t.Errorf("%q: %v %+v", empty, err, data(c))
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/nope.yaml")
	if err == nil || !strings.Contains(err.Error(), "testdata/nope.yaml") {
		t.Fatalf("err %v, want one naming the file", err)
	}
}

// Flags override the file, which overrides the defaults; errors in flag
// values name the flag.
func TestSetPrecedence(t *testing.T) {
	c, err := Parse("p.yaml", []byte("listen:\n  address: 0.0.0.0:5672\nlog:\n  level: debug\n  format: json\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Set("log.level", "warn", "--log-level"); err != nil {
		t.Fatal(err)
	}
	if err := c.Set("upstream.address", "10.0.0.5:5672", "--upstream"); err != nil {
		t.Fatal(err)
	}
	if c.Listen.Address != "0.0.0.0:5672" || c.Log.Level != "warn" || c.Log.Format != "json" ||
		c.Upstream.Address != "10.0.0.5:5672" || c.Limits.Heartbeat != Default().Limits.Heartbeat {
		t.Errorf("after flags: %+v", data(c))
	}

	// A bad flag value is reported against the flag, not the file line.
	if err := c.Set("listen.address", "nohost", "--listen"); err != nil {
		t.Fatal(err) // strings are checked by Validate
	}
	if err := c.Set("log.format", "yaml", "--log-format"); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`flag --listen: listen.address: "nohost" is not host:port (e.g. 127.0.0.1:5672, [::1]:5672, :5672)`,
		`flag --log-format: log.format: "yaml" is not one of json, console, auto`,
	}
	err = c.Validate()
	if err == nil || err.Error() != strings.Join(want, "\n") {
		t.Errorf("Validate:\n%v\nwant:\n%s", err, strings.Join(want, "\n"))
	}

	for key, wantErr := range map[string]string{
		"limits.heartbeat": `flag --x: limits.heartbeat: "soon" is not a duration (a number with a unit: 500ms, 5s, 1m)`,
		"limits.nope":      `flag --x: limits.nope: unknown key`,
		"limits":           `flag --x: limits: not a single value`,
	} {
		if err := c.Set(key, "soon", "--x"); err == nil || err.Error() != wantErr {
			t.Errorf("Set(%s): %v, want %s", key, err, wantErr)
		}
	}
	if err := c.Set("proxy_protocol.trusted", "10.0.0.0/8, 192.168.0.1", "--trusted"); err != nil ||
		len(c.ProxyProtocol.Trusted) != 2 || c.ProxyProtocol.Trusted[1] != netip.MustParsePrefix("192.168.0.1/32") {
		t.Errorf("Set list: %v %v", err, c.ProxyProtocol.Trusted)
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{
		"0": 0, "1024": 1024, "16MiB": 16 << 20, "16 MiB": 16 << 20, "2KiB": 2048,
		"1GiB": 1 << 30, "3KB": 3000, "5MB": 5e6, "1GB": 1e9, "7B": 7,
	} {
		if got, err := ParseByteSize(in); err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1.5MiB", "16XB", "99999999999GiB"} {
		if _, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) accepted", in)
		}
	}
	for b, want := range map[ByteSize]string{0: "0", 1000: "1000", 16 << 20: "16MiB", 3 << 30: "3GiB", 1536: "1536", 2048: "2KiB"} {
		if got := b.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int64(b), got, want)
		}
	}
}
