package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is a bench run's result. Its JSON form is what --json prints.
type Report struct {
	Machine   Machine          `json:"machine"`
	Settings  Settings         `json:"settings"`
	Workloads []WorkloadReport `json:"workloads"`
}

// Machine describes where the run happened.
type Machine struct {
	GOOS          string `json:"goos"`
	GOARCH        string `json:"goarch"`
	NumCPU        int    `json:"num_cpu"`
	GoVersion     string `json:"go_version"`
	BrokerProduct string `json:"broker_product"`
	BrokerVersion string `json:"broker_version"`
	// LoadBefore and LoadAfter are /proc/loadavg's 1, 5 and 15 minute
	// load averages when the run began and ended (empty where there is
	// none): other work on a shared box shows up here.
	LoadBefore string `json:"load_before,omitempty"`
	LoadAfter  string `json:"load_after,omitempty"`
}

// Settings echoes the run's settings.
type Settings struct {
	Targets        []TargetSpec `json:"targets"`
	Messages       int          `json:"messages"`
	MessageSize    int          `json:"message_size"`
	Transient      bool         `json:"transient"`
	Window         int          `json:"confirm_window"`
	Prefetch       int          `json:"prefetch"`
	LatencySamples int          `json:"latency_samples"`
	Runs           int          `json:"runs"`
	Warmup         int          `json:"warmup"`
}

// WorkloadReport holds one workload's figures per target and per pair.
type WorkloadReport struct {
	Name string `json:"name"`
	// Latency says what the latency figures measure.
	Latency string          `json:"latency"`
	Targets []TargetSummary `json:"targets"`
	Pairs   []PairSummary   `json:"pairs"`
}

// TargetSummary is one target's medians over the measured rounds.
type TargetSummary struct {
	Name       string   `json:"name"`
	Throughput float64  `json:"msgs_per_sec"`
	P50        Micros   `json:"p50_us"`
	P99        Micros   `json:"p99_us"`
	Rounds     []Sample `json:"rounds"`
}

// Sample is one target's figures in one measured round.
type Sample struct {
	Round      int     `json:"round"`
	Position   int     `json:"position"` // 0 = measured first in its round
	Throughput float64 `json:"msgs_per_sec"`
	Elapsed    Micros  `json:"elapsed_us"`
	P50        Micros  `json:"p50_us"`
	P99        Micros  `json:"p99_us"`
}

// PairSummary compares target A with target B (A/B, A−B), as medians of
// the per-round paired values, with the range over rounds and a
// distribution-free confidence interval for the median ratio.
type PairSummary struct {
	A        string  `json:"a"`
	B        string  `json:"b"`
	Ratio    float64 `json:"throughput_ratio"`
	RatioMin float64 `json:"throughput_ratio_min"`
	RatioMax float64 `json:"throughput_ratio_max"`
	// RatioLow and RatioHigh bound the median ratio with confidence
	// RatioConfidence: 0.95 when there are enough rounds (6 or more),
	// otherwise the (lower) coverage of min–max.
	RatioLow        float64 `json:"throughput_ratio_ci_low"`
	RatioHigh       float64 `json:"throughput_ratio_ci_high"`
	RatioConfidence float64 `json:"throughput_ratio_ci_confidence"`
	AddedP50        Micros  `json:"added_p50_us"`
	AddedP99        Micros  `json:"added_p99_us"`
}

// Micros is a duration that appears in JSON as microseconds.
type Micros float64

func micros(d time.Duration) Micros { return Micros(float64(d) / float64(time.Microsecond)) }

// Duration converts back.
func (m Micros) Duration() time.Duration {
	return time.Duration(float64(m) * float64(time.Microsecond))
}

// WriteJSON writes r as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes one table per workload.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	s := r.Settings
	fmt.Fprintf(&b, "mirrorproxy bench: %s/%s, %d CPUs, %s, broker %s %s\n",
		r.Machine.GOOS, r.Machine.GOARCH, r.Machine.NumCPU, r.Machine.GoVersion,
		r.Machine.BrokerProduct, r.Machine.BrokerVersion)
	if r.Machine.LoadBefore != "" {
		fmt.Fprintf(&b, "load average before %s, after %s\n", r.Machine.LoadBefore, r.Machine.LoadAfter)
	}
	fmt.Fprintf(&b, "%d measured rounds (median shown), %d warm-up discarded; targets rotate each round\n",
		s.Runs, s.Warmup)
	for _, wl := range r.Workloads {
		b.WriteString("\n")
		switch wl.Name {
		case WorkloadPublish:
			fmt.Fprintf(&b, "publish-with-confirms: %d × %d B %s, confirm window %d\n", s.Messages, s.MessageSize, persistence(s.Transient), s.Window)
		case WorkloadConsume:
			fmt.Fprintf(&b, "consume-with-acks: %d × %d B %s pre-filled, prefetch %d, one ack per message; latency from %d ping-pongs\n",
				s.Messages, s.MessageSize, persistence(s.Transient), s.Prefetch, s.LatencySamples)
		}
		fmt.Fprintf(&b, "latency = %s\n", wl.Latency)
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "target\tmsg/s\tp50\tp99\t\n")
		for _, t := range wl.Targets {
			fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t\n", t.Name, t.Throughput, fmtDur(t.P50.Duration()), fmtDur(t.P99.Duration()))
		}
		_ = tw.Flush()
		if len(wl.Pairs) > 0 {
			b.WriteString("\n")
			tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintf(tw, "pair\tthroughput ratio\tconfidence interval\tmin–max\tadded p50\tadded p99\t\n")
			for _, p := range wl.Pairs {
				ci := "none (1 round)"
				if p.RatioConfidence > 0 {
					ci = fmt.Sprintf("%.3f–%.3f @%.0f%%", p.RatioLow, p.RatioHigh, 100*p.RatioConfidence)
				}
				fmt.Fprintf(tw, "%s/%s\t%.3f\t%s\t%.3f–%.3f\t%s\t%s\t\n", p.A, p.B, p.Ratio, ci,
					p.RatioMin, p.RatioMax, fmtSigned(p.AddedP50.Duration()), fmtSigned(p.AddedP99.Duration()))
			}
			_ = tw.Flush()
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func persistence(transient bool) string {
	if transient {
		return "transient"
	}
	return "persistent"
}

// fmtDur prints a latency with three significant-ish digits.
func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	}
}

func fmtSigned(d time.Duration) string {
	if d < 0 {
		return "-" + fmtDur(-d)
	}
	return "+" + fmtDur(d)
}

// loadAverage returns the first three fields of /proc/loadavg, or "".
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
