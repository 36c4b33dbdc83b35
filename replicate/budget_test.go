package replicate

import (
	"context"
	"testing"
	"time"
)

func TestByteBudget(t *testing.T) {
	b := newByteBudget(100)
	ctx := context.Background()
	if !b.acquire(ctx, 60) || !b.acquire(ctx, 40) {
		t.Fatal("acquire within the budget failed")
	}
	got := make(chan bool, 1)
	go func() { got <- b.acquire(ctx, 10) }()
	select {
	case <-got:
		t.Fatal("acquired past the budget")
	case <-time.After(20 * time.Millisecond): // it must still be waiting
	}
	b.release(40)
	if !<-got {
		t.Fatal("acquire after a release failed")
	}
	b.release(60)
	b.release(10)
	// A message larger than the whole budget passes when nothing is held.
	if !b.acquire(ctx, 500) {
		t.Fatal("an oversized message never passes")
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan bool, 1)
	go func() { done <- b.acquire(cctx, 1) }()
	cancel()
	if <-done {
		t.Fatal("acquire succeeded after its context ended")
	}
}
