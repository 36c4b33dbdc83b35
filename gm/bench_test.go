package gm

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkRing3 drives a 3-member loopback ring with 1 KiB ops from one
// sender (the replication pattern) and reports throughput and the latency
// from Propose to the op being stable (applied by both other members).
func BenchmarkRing3(b *testing.B) { benchRing3(b, 0) }

// BenchmarkRing3Paced offers 50k ops/s (bursts of 50 every millisecond):
// the stability latency at that rate, without the sender's own queueing.
func BenchmarkRing3Paced(b *testing.B) { benchRing3(b, 50) }

func benchRing3(b *testing.B, burst int) {
	ids := []string{"b0", "b1", "b2"}
	c := newCluster(&testing.T{}, ids, testSecret, nil)
	defer c.closeAll()
	v := View{Epoch: 1, Members: []Member{{"b0", 1}, {"b1", 1}, {"b2", 1}}}
	c.install(v)
	sender := c.nodes["b0"]
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	payload := make([]byte, 1024)

	var mu sync.Mutex
	start := make([]time.Time, 0, b.N+1)
	lat := make([]time.Duration, 0, b.N)
	done := make(chan struct{})
	go func() { // stability watcher
		defer close(done)
		var seen uint64
		for seen < uint64(b.N) {
			if err := sender.WaitStable(ctx, seen+1); err != nil {
				return
			}
			now := time.Now()
			st := sender.Stable()
			mu.Lock()
			for q := seen + 1; q <= st && q <= uint64(len(start)); q++ {
				lat = append(lat, now.Sub(start[q-1]))
			}
			seen = min(st, uint64(len(start)))
			mu.Unlock()
		}
	}()
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	t0 := time.Now()
	next := t0
	for i := 0; i < b.N; i++ {
		if burst > 0 && i%burst == 0 {
			next = next.Add(time.Millisecond)
			time.Sleep(time.Until(next))
		}
		mu.Lock()
		start = append(start, time.Now())
		mu.Unlock()
		if _, err := sender.Propose(ctx, payload); err != nil {
			b.Fatal(err)
		}
	}
	<-done
	el := time.Since(t0)
	b.StopTimer()
	slices.Sort(lat)
	if len(lat) > 0 {
		pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
		b.ReportMetric(float64(b.N)/el.Seconds(), "ops/s")
		b.ReportMetric(pct(0.50), "p50-ms")
		b.ReportMetric(pct(0.99), "p99-ms")
	}
}
