package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Latency definitions, as reported.
const (
	publishLatency = "publish→confirm per message (window full: mostly queueing, ≈ window ÷ throughput)"
	consumeLatency = "delivery path: basic.publish by a producer at the queue's broker (mirrored: its master sidecar) → basic.deliver at the consumer through the target, one message in flight"
)

// Run measures cfg.Targets with cfg.Workloads and returns the report. It
// starts a broker when cfg.BrokerURL is empty, starts the in-process
// targets, and stops everything it started before returning.
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	loadBefore := loadAverage()
	brokerURL := cfg.BrokerURL
	if brokerURL == "" {
		url, stop, err := StartBroker(ctx, log)
		if err != nil {
			return nil, fmt.Errorf("bench: no --broker given and starting one failed: %w", err)
		}
		defer func() { err = errors.Join(err, stop()) }()
		brokerURL = url
	}
	brokerAddr, err := brokerHostPort(brokerURL)
	if err != nil {
		return nil, fmt.Errorf("bench: broker URL %q: %w", brokerURL, err)
	}

	admin, err := dial(ctx, brokerURL, "admin")
	if err != nil {
		return nil, fmt.Errorf("bench: broker %s: %w", brokerAddr, err)
	}
	defer func() {
		if cerr := admin.Close(); cerr != nil && !errors.Is(cerr, amqp.ErrClosed) {
			err = errors.Join(err, fmt.Errorf("bench: close admin connection: %w", cerr))
		}
	}()

	sh := &shared{}
	defer func() {
		if cerr := sh.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("bench: %w", cerr))
		}
	}()
	targets := make([]*target, 0, len(cfg.Targets))
	defer func() {
		for _, t := range targets {
			if cerr := t.close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("bench: stop target %q: %w", t.spec.Name, cerr))
			}
		}
	}()
	// admins are the admin connections by URL; closed before the targets.
	admins := map[string]*amqp.Connection{brokerURL: admin}
	defer func() {
		for u, c := range admins {
			if u == brokerURL {
				continue
			}
			if cerr := c.Close(); cerr != nil && !errors.Is(cerr, amqp.ErrClosed) {
				err = errors.Join(err, fmt.Errorf("bench: close admin connection: %w", cerr))
			}
		}
	}()
	for _, spec := range cfg.Targets {
		t, err := startTarget(ctx, spec, brokerURL, brokerAddr, sh, log)
		if err != nil {
			return nil, err
		}
		targets = append(targets, t)
		if admins[t.adminURL] == nil {
			c, err := dial(ctx, t.adminURL, "admin "+spec.Name)
			if err != nil {
				return nil, fmt.Errorf("bench: target %q: %w", spec.Name, err)
			}
			admins[t.adminURL] = c
		}
		log.Info().Str("target", spec.Name).Str("addr", t.addr).Msg("target ready")
	}

	b := &bencher{
		cfg:    cfg,
		admin:  admin,
		admins: admins,
		pub:    newPublisher(deliveryMode(cfg.Transient), cfg.Window, cfg.MessageSize),
		con:    newConsumer(deliveryMode(cfg.Transient), cfg.Prefetch, cfg.MessageSize),
		lat:    make([]int64, max(cfg.Messages, cfg.LatencySamples)),
		runID:  fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano()),
	}
	samples := map[string]map[string][]Sample{} // workload → target → rounds
	for _, w := range cfg.Workloads {
		samples[w] = map[string][]Sample{}
	}
	rounds := cfg.Warmup + cfg.Runs
	for r := range rounds {
		warm := r < cfg.Warmup
		for _, w := range cfg.Workloads {
			for pos, t := range rotated(targets, r) {
				s, err := b.runOne(ctx, w, t, r)
				if err != nil {
					return nil, fmt.Errorf("bench: round %d, %s via %s: %w", r+1, w, t.spec.Name, err)
				}
				s.Round, s.Position = r+1, pos
				log.Info().Int("round", r+1).Bool("warmup", warm).Str("workload", w).Str("target", t.spec.Name).
					Int("msgs_per_sec", int(s.Throughput)).Dur("p50", s.P50.Duration()).Dur("p99", s.P99.Duration()).
					Msg("run done")
				if !warm {
					samples[w][t.spec.Name] = append(samples[w][t.spec.Name], s)
				}
			}
		}
	}
	rep = b.report(samples)
	rep.Machine.LoadBefore, rep.Machine.LoadAfter = loadBefore, loadAverage()
	return rep, nil
}

func deliveryMode(transient bool) uint8 {
	if transient {
		return amqp.Transient
	}
	return amqp.Persistent
}

// bencher holds what the runs share: the admin connection (direct to the
// broker) and the buffers reused from run to run.
type bencher struct {
	cfg    Config
	admin  *amqp.Connection            // the single broker's
	admins map[string]*amqp.Connection // by target.adminURL
	pub    *publisher
	con    *consumer
	lat    []int64
	runID  string
	seq    int
}

// runOne runs workload w against t once, on a fresh queue it deletes
// afterwards.
func (b *bencher) runOne(ctx context.Context, w string, t *target, round int) (s Sample, err error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.RunTimeout)
	defer cancel()

	b.seq++
	queue := fmt.Sprintf("%s%s-%d-%s-%s", queuePrefix, b.runID, b.seq, w, t.spec.Name)
	admin := b.admins[t.adminURL]
	if err := declare(admin, queue, t.queueType); err != nil {
		return s, err
	}
	defer func() {
		if derr := deleteQueue(admin, queue); derr != nil {
			err = errors.Join(err, derr)
		}
	}()

	n := b.cfg.Messages
	switch w {
	case WorkloadPublish:
		conn, err := dial(ctx, t.url, fmt.Sprintf("publish round %d", round+1))
		if err != nil {
			return s, err
		}
		defer closeConn(conn, &err)
		lat := b.lat[:n]
		elapsed, err := b.pub.run(ctx, conn, queue, n, lat)
		if err != nil {
			return s, err
		}
		p50, p99 := percentiles(lat)
		s = Sample{Throughput: float64(n) / elapsed.Seconds(), Elapsed: micros(elapsed), P50: micros(p50), P99: micros(p99)}
		if err := expectReady(admin, queue, n); err != nil {
			return s, fmt.Errorf("after publishing: %w", err)
		}
		return s, nil

	case WorkloadConsume:
		if _, err := b.pub.run(ctx, admin, queue, n, nil); err != nil {
			return s, fmt.Errorf("pre-fill at the broker: %w", err)
		}
		if err := expectReady(admin, queue, n); err != nil {
			return s, fmt.Errorf("after pre-fill: %w", err)
		}
		conn, err := dial(ctx, t.url, fmt.Sprintf("consume round %d", round+1))
		if err != nil {
			return s, err
		}
		defer closeConn(conn, &err)
		lat := b.lat[:b.cfg.LatencySamples]
		res, err := b.con.run(ctx, conn, admin, queue, n, lat)
		if err != nil {
			return s, err
		}
		p50, p99 := percentiles(lat)
		s = Sample{Throughput: float64(n) / res.drain.Seconds(), Elapsed: micros(res.drain), P50: micros(p50), P99: micros(p99)}
		if err := expectReady(admin, queue, 0); err != nil {
			return s, fmt.Errorf("after consuming: %w", err)
		}
		return s, nil
	}
	return s, fmt.Errorf("unknown workload %q", w)
}

// declare declares a fresh durable queue of type qtype (classic, quorum).
func declare(admin *amqp.Connection, queue, qtype string) error {
	return withAdmin(admin, func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare(queue, true, false, false, false, amqp.Table{"x-queue-type": qtype})
		if err != nil {
			return fmt.Errorf("declare %s queue %s: %w", qtype, queue, err)
		}
		return nil
	})
}

func deleteQueue(admin *amqp.Connection, queue string) error {
	return withAdmin(admin, func(ch *amqp.Channel) error {
		if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
			return fmt.Errorf("delete queue %s: %w", queue, err)
		}
		return nil
	})
}

// expectReady checks that queue holds exactly n ready messages.
func expectReady(admin *amqp.Connection, queue string, n int) error {
	return withAdmin(admin, func(ch *amqp.Channel) error {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("inspect queue %s: %w", queue, err)
		}
		if q.Messages != n {
			return fmt.Errorf("queue %s holds %d ready messages, expected %d", queue, q.Messages, n)
		}
		return nil
	})
}

// withAdmin runs f on a fresh channel of an admin connection.
func withAdmin(admin *amqp.Connection, f func(*amqp.Channel) error) (err error) {
	ch, err := admin.Channel()
	if err != nil {
		return fmt.Errorf("admin channel: %w", err)
	}
	defer closeChannel(ch, &err)
	return f(ch)
}

func closeConn(c *amqp.Connection, err *error) {
	if cerr := c.Close(); cerr != nil && *err == nil && !errors.Is(cerr, amqp.ErrClosed) {
		*err = fmt.Errorf("close connection: %w", cerr)
	}
}

// report turns the measured samples into medians, ratios and differences.
func (b *bencher) report(samples map[string]map[string][]Sample) *Report {
	cfg := b.cfg
	props := b.admin.Properties
	rep := &Report{
		Machine: Machine{
			GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, NumCPU: runtime.NumCPU(), GoVersion: runtime.Version(),
			BrokerProduct: fmt.Sprint(props["product"]), BrokerVersion: fmt.Sprint(props["version"]),
		},
		Settings: Settings{
			Targets: cfg.Targets, Messages: cfg.Messages, MessageSize: cfg.MessageSize, Transient: cfg.Transient, Window: cfg.Window,
			Prefetch: cfg.Prefetch, LatencySamples: cfg.LatencySamples, Runs: cfg.Runs, Warmup: cfg.Warmup,
		},
	}
	for _, w := range cfg.Workloads {
		wr := WorkloadReport{Name: w, Latency: publishLatency}
		if w == WorkloadConsume {
			wr.Latency = consumeLatency
		}
		for _, spec := range cfg.Targets {
			ss := samples[w][spec.Name]
			wr.Targets = append(wr.Targets, TargetSummary{
				Name:       spec.Name,
				Throughput: median(pick(ss, func(s Sample) float64 { return s.Throughput })),
				P50:        Micros(median(pick(ss, func(s Sample) float64 { return float64(s.P50) }))),
				P99:        Micros(median(pick(ss, func(s Sample) float64 { return float64(s.P99) }))),
				Rounds:     ss,
			})
		}
		for i, a := range cfg.Targets {
			for _, bb := range cfg.Targets[:i] {
				wr.Pairs = append(wr.Pairs, pair(a.Name, bb.Name, samples[w][a.Name], samples[w][bb.Name]))
			}
		}
		rep.Workloads = append(rep.Workloads, wr)
	}
	return rep
}

// pair compares a with b round by round (both slices are in round order and
// have one sample per measured round).
func pair(a, b string, as, bs []Sample) PairSummary {
	n := min(len(as), len(bs))
	ratios := make([]float64, n)
	d50 := make([]float64, n)
	d99 := make([]float64, n)
	for i := range n {
		ratios[i] = as[i].Throughput / bs[i].Throughput
		d50[i] = float64(as[i].P50 - bs[i].P50)
		d99[i] = float64(as[i].P99 - bs[i].P99)
	}
	lo, hi := spread(ratios)
	cilo, cihi, cov := medianCI(ratios, 0.95)
	return PairSummary{
		A: a, B: b,
		Ratio: median(ratios), RatioMin: lo, RatioMax: hi,
		RatioLow: cilo, RatioHigh: cihi, RatioConfidence: cov,
		AddedP50: Micros(median(d50)), AddedP99: Micros(median(d99)),
	}
}

func pick(ss []Sample, f func(Sample) float64) []float64 {
	out := make([]float64, len(ss))
	for i, s := range ss {
		out[i] = f(s)
	}
	return out
}
