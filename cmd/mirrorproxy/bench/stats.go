package bench

import (
	"math"
	"slices"
	"time"
)

// percentiles sorts ns in place and returns its p50 and p99 by the
// nearest-rank method (the smallest sample with at least q of all samples at
// or below it). Empty input gives zeros.
func percentiles(ns []int64) (p50, p99 time.Duration) {
	if len(ns) == 0 {
		return 0, 0
	}
	slices.Sort(ns)
	return time.Duration(nearestRank(ns, 0.50)), time.Duration(nearestRank(ns, 0.99))
}

func nearestRank(sorted []int64, q float64) int64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// median returns the median of xs (the mean of the two middle values for an
// even count), or 0 for none. xs is not changed.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// spread returns the smallest and largest of xs, or zeros for none.
func spread(xs []float64) (lo, hi float64) {
	if len(xs) == 0 {
		return 0, 0
	}
	return slices.Min(xs), slices.Max(xs)
}

// rotated returns xs rotated left by r: round r measures the targets in a
// different order each time (ABC, BCA, CAB, …).
func rotated[T any](xs []T, r int) []T {
	if len(xs) == 0 {
		return nil
	}
	r %= len(xs)
	return append(slices.Clone(xs[r:]), xs[:r]...)
}

// medianCI returns a distribution-free confidence interval for the median
// of xs: the order statistics x(j) and x(n+1-j) (1-based, sorted) for the
// largest j whose coverage, 1 − 2·P(B ≤ j−1) with B ~ Binomial(n, ½), is at
// least want. When even min–max covers less than want (n < 6 for 95%),
// min–max is returned with its own, smaller, coverage.
func medianCI(xs []float64, want float64) (lo, hi, coverage float64) {
	n := len(xs)
	if n == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	j, cov := 1, 1-2*binomTail(n, 0)
	for k := 2; k <= (n+1)/2; k++ {
		c := 1 - 2*binomTail(n, k-1)
		if c < want {
			break
		}
		j, cov = k, c
	}
	return s[j-1], s[n-j], cov
}

// binomTail is P(B ≤ m) for B ~ Binomial(n, ½).
func binomTail(n, m int) float64 {
	var p float64
	lgN, _ := math.Lgamma(float64(n + 1))
	for i := 0; i <= m; i++ {
		lgI, _ := math.Lgamma(float64(i + 1))
		lgR, _ := math.Lgamma(float64(n - i + 1))
		p += math.Exp(lgN - lgI - lgR - float64(n)*math.Ln2)
	}
	return p
}
