package bench

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPercentilesNearestRank(t *testing.T) {
	ns := make([]int64, 100)
	for i := range ns {
		ns[i] = int64(100 - i) // 100…1, unsorted
	}
	p50, p99 := percentiles(ns)
	if p50 != 50 || p99 != 99 {
		t.Errorf("1..100: p50=%d p99=%d, want 50 and 99", p50, p99)
	}
	p50, p99 = percentiles([]int64{7})
	if p50 != 7 || p99 != 7 {
		t.Errorf("single sample: p50=%d p99=%d, want 7 and 7", p50, p99)
	}
	p50, p99 = percentiles([]int64{1, 2, 3, 1000})
	if p50 != 2 || p99 != 1000 {
		t.Errorf("{1,2,3,1000}: p50=%d p99=%d, want 2 and 1000", p50, p99)
	}
	if p50, p99 := percentiles(nil); p50 != 0 || p99 != 0 {
		t.Errorf("empty: %d %d", p50, p99)
	}
}

func TestMedianAndSpread(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}} {
		in := slices.Clone(c.in)
		if got := median(in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
		if !slices.Equal(in, c.in) {
			t.Errorf("median changed its input: %v", in)
		}
	}
	if lo, hi := spread([]float64{0.9, 1.1, 1}); lo != 0.9 || hi != 1.1 {
		t.Errorf("spread = %v, %v", lo, hi)
	}
}

func TestRotatedCoversEveryPosition(t *testing.T) {
	xs := []string{"a", "b", "c"}
	want := [][]string{{"a", "b", "c"}, {"b", "c", "a"}, {"c", "a", "b"}, {"a", "b", "c"}}
	for r, w := range want {
		if got := rotated(xs, r); !slices.Equal(got, w) {
			t.Errorf("rotated(%v, %d) = %v, want %v", xs, r, got, w)
		}
	}
	if !slices.Equal(xs, []string{"a", "b", "c"}) {
		t.Errorf("rotated changed its input: %v", xs)
	}
}

func TestPairIsPerRound(t *testing.T) {
	// Round 2 is slow for both targets: paired ratios stay at 0.5, while a
	// ratio of medians would mix rounds.
	a := []Sample{{Throughput: 50, P50: 110, P99: 300}, {Throughput: 5, P50: 1010, P99: 2000}, {Throughput: 60, P50: 100, P99: 200}}
	b := []Sample{{Throughput: 100, P50: 100, P99: 200}, {Throughput: 10, P50: 1000, P99: 1000}, {Throughput: 120, P50: 90, P99: 100}}
	p := pair("proxy", "hop", a, b)
	if p.Ratio != 0.5 || p.RatioMin != 0.5 || p.RatioMax != 0.5 {
		t.Errorf("ratio %v (%v–%v), want 0.5", p.Ratio, p.RatioMin, p.RatioMax)
	}
	if p.AddedP50 != 10 || p.AddedP99 != 100 {
		t.Errorf("added p50 %v p99 %v, want 10 and 100", p.AddedP50, p.AddedP99)
	}
}

func TestParseTargetsAndValidate(t *testing.T) {
	ts, err := ParseTargets([]string{"direct, hop,,proxy"}, []string{"haproxy=127.0.0.1:5673"})
	if err != nil {
		t.Fatal(err)
	}
	want := []TargetSpec{{Name: "direct"}, {Name: "hop"}, {Name: "proxy"}, {Name: "haproxy", Addr: "127.0.0.1:5673"}}
	if !slices.Equal(ts, want) {
		t.Fatalf("got %v, want %v", ts, want)
	}
	three, err := ParseTargets([]string{"direct,mirrored,rmq-mirrored,rmq-quorum"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c3 := DefaultConfig
	c3.Targets = three
	if err := c3.Validate(); err != nil {
		t.Errorf("the 3-node targets are rejected: %v", err)
	}
	for _, bad := range []string{"noequals", "=1.2.3.4:5", "x=", "hop=127.0.0.1:1", "mirrored=127.0.0.1:1", "rmq-quorum=127.0.0.1:1"} {
		if _, err := ParseTargets(nil, []string{bad}); err == nil {
			t.Errorf("--target %q accepted", bad)
		}
	}

	cfg := DefaultConfig
	cfg.BrokerURL = "amqp://guest:guest@127.0.0.1:5672/"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for name, mut := range map[string]func(*Config){
		"broker":   func(c *Config) { c.BrokerURL = "http://x/" },
		"target":   func(c *Config) { c.Targets = []TargetSpec{{Name: "nosuch"}} },
		"twice":    func(c *Config) { c.Targets = []TargetSpec{{Name: "hop"}, {Name: "hop"}} },
		"address":  func(c *Config) { c.Targets = []TargetSpec{{Name: "x", Addr: "nohostport"}} },
		"workload": func(c *Config) { c.Workloads = []string{"publish", "get"} },
		"messages": func(c *Config) { c.Messages = 0 },
		"size":     func(c *Config) { c.MessageSize = 7 },
		"window":   func(c *Config) { c.Window = 0 },
		"prefetch": func(c *Config) { c.Prefetch = 70000 },
		"latency":  func(c *Config) { c.LatencySamples = 0 },
		"runs":     func(c *Config) { c.Runs = 0 },
		"warm-up":  func(c *Config) { c.Warmup = -1 },
		"timeout":  func(c *Config) { c.RunTimeout = 0 },
	} {
		c := cfg
		c.Targets = slices.Clone(cfg.Targets)
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: bad config accepted", name)
		}
	}
}

func TestURLVia(t *testing.T) {
	got, err := urlVia("amqp://u:p@broker:5672/vh", "127.0.0.1:4000")
	if err != nil || got != "amqp://u:p@127.0.0.1:4000/vh" {
		t.Errorf("got %q, %v", got, err)
	}
	if hp, err := brokerHostPort("amqp://u:p@broker/"); err != nil || hp != "broker:5672" {
		t.Errorf("default port: %q, %v", hp, err)
	}
}

func TestWriteTextShowsRatios(t *testing.T) {
	rep := &Report{
		Settings: Settings{Runs: 3, Messages: 10, MessageSize: 1024, Window: 256},
		Workloads: []WorkloadReport{{
			Name: WorkloadPublish, Latency: publishLatency,
			Targets: []TargetSummary{{Name: "direct", Throughput: 1000, P50: 1500, P99: 3000}},
			Pairs:   []PairSummary{{A: "hop", B: "direct", Ratio: 0.975, RatioMin: 0.9, RatioMax: 1.01, AddedP50: 20, AddedP99: -5}},
		}},
	}
	rep.Workloads[0].Pairs[0].RatioLow, rep.Workloads[0].Pairs[0].RatioHigh, rep.Workloads[0].Pairs[0].RatioConfidence = 0.95, 1.0, 0.75
	var b strings.Builder
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"1000", "1.50ms", "3.00ms", "hop/direct", "0.975", "0.950–1.000 @75%", "0.900–1.010", "+20µs", "-5µs"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, b.String())
		}
	}
	rep.Workloads[0].Pairs[0].RatioConfidence = 0
	b.Reset()
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "none (1 round)") {
		t.Errorf("a single round shows an interval:\n%s", b.String())
	}
	if fmtDur(1500*time.Millisecond) != "1.50s" {
		t.Errorf("fmtDur(1.5s) = %s", fmtDur(1500*time.Millisecond))
	}
}

func TestMedianCI(t *testing.T) {
	// n = 3: only min–max, covering 1 − 2·(1/8) = 75%.
	lo, hi, cov := medianCI([]float64{3, 1, 2}, 0.95)
	if lo != 1 || hi != 3 || math.Abs(cov-0.75) > 1e-12 {
		t.Errorf("n=3: %v–%v @%v, want 1–3 @0.75", lo, hi, cov)
	}
	// n = 6: min–max covers 1 − 2/64 = 96.9%; the next pair 1 − 14/64 < 95%.
	lo, hi, cov = medianCI([]float64{6, 5, 4, 3, 2, 1}, 0.95)
	if lo != 1 || hi != 6 || math.Abs(cov-(1-2.0/64)) > 1e-12 {
		t.Errorf("n=6: %v–%v @%v", lo, hi, cov)
	}
	// n = 30: the textbook 95% interval is x(10)…x(21), coverage 95.7%.
	xs := make([]float64, 30)
	for i := range xs {
		xs[i] = float64(30 - i)
	}
	lo, hi, cov = medianCI(xs, 0.95)
	if lo != 10 || hi != 21 || cov < 0.95 || cov > 0.96 {
		t.Errorf("n=30: %v–%v @%v, want 10–21 @≈0.957", lo, hi, cov)
	}
	if lo, hi, cov := medianCI(nil, 0.95); lo != 0 || hi != 0 || cov != 0 {
		t.Errorf("empty: %v %v %v", lo, hi, cov)
	}
}
