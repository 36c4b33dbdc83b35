package bench

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/mirrorproxy/mirrorproxy/testenv"
	// The docker backend, for MIRRORPROXY_TESTENV=docker.
	_ "github.com/mirrorproxy/mirrorproxy/testenv/docker"
)

// sharedBroker is started once for all Go benchmarks of the package (unless
// EnvBroker names one) and closed by TestMain.
var sharedBroker struct {
	once sync.Once
	g    *testenv.Group
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if g := sharedBroker.g; g != nil {
		if err := g.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "close the benchmarks' broker:", err)
			code = 1
		}
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func benchBrokerURL(b *testing.B) string {
	if url := os.Getenv(EnvBroker); url != "" {
		return url
	}
	sharedBroker.once.Do(func() {
		sharedBroker.g, sharedBroker.err = testenv.StartGroup(context.Background(), testenv.Options{Nodes: 1})
	})
	if sharedBroker.err != nil {
		b.Fatal(sharedBroker.err)
	}
	return sharedBroker.g.Nodes[0].URL
}

// benchTarget runs one workload with b.N messages against one target. The
// bench tool (interleaved rounds, ratios) is the real measurement; these
// make one target's figures easy to get with the usual Go tooling, e.g.
//
//	go test -run '^$' -bench 'Publish' -benchtime 20000x ./cmd/mirrorproxy/bench/
//
// ns/op is the timed phase divided by b.N (the consume pre-fill is not in
// it); msgs/s, p50-µs and p99-µs are reported as extra metrics.
func benchTarget(b *testing.B, name, workload string) {
	url := benchBrokerURL(b)
	addr, err := brokerHostPort(url)
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	t, err := startTarget(ctx, TargetSpec{Name: name}, url, addr, &shared{}, zerolog.Nop())
	if err != nil && strings.Contains(err.Error(), "Serve returned at once: TODO") {
		b.Skipf("the proxy server is not written yet: %v", err)
	}
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := t.close(); err != nil {
			b.Error(err)
		}
	}()
	admin, err := dial(ctx, url, "admin")
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close()

	cfg := DefaultConfig
	cfg.Messages = b.N
	cfg.LatencySamples = 200
	be := &bencher{
		cfg:    cfg,
		admin:  admin,
		admins: map[string]*amqp.Connection{url: admin},
		pub:    newPublisher(deliveryMode(cfg.Transient), cfg.Window, cfg.MessageSize),
		con:    newConsumer(deliveryMode(cfg.Transient), cfg.Prefetch, cfg.MessageSize),
		lat:    make([]int64, max(cfg.Messages, cfg.LatencySamples)),
		runID:  fmt.Sprintf("gobench-%d", time.Now().UnixNano()),
	}
	b.ResetTimer()
	s, err := be.runOne(ctx, workload, t, 0)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(s.Elapsed.Duration())/float64(b.N), "ns/op")
	b.ReportMetric(s.Throughput, "msgs/s")
	b.ReportMetric(float64(s.P50), "p50-µs")
	b.ReportMetric(float64(s.P99), "p99-µs")
}

func BenchmarkDirectPublish(b *testing.B) { benchTarget(b, TargetDirect, WorkloadPublish) }
func BenchmarkHopPublish(b *testing.B)    { benchTarget(b, TargetHop, WorkloadPublish) }
func BenchmarkProxyPublish(b *testing.B)  { benchTarget(b, TargetProxy, WorkloadPublish) }
func BenchmarkDirectConsume(b *testing.B) { benchTarget(b, TargetDirect, WorkloadConsume) }
func BenchmarkHopConsume(b *testing.B)    { benchTarget(b, TargetHop, WorkloadConsume) }
func BenchmarkProxyConsume(b *testing.B)  { benchTarget(b, TargetProxy, WorkloadConsume) }
