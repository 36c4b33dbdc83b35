package replicate

import (
	"context"
	"sync"
)

// byteBudget bounds the bytes of messages read from a broker and not yet
// handed on (sync and rotation read whole queues; a count bound alone
// would let large messages pile up: DESIGN invariant 8). A message larger
// than the whole budget is let through when nothing else is held.
type byteBudget struct {
	mu    sync.Mutex
	cond  *sync.Cond
	limit int
	used  int
}

func newByteBudget(limit int) *byteBudget {
	b := &byteBudget{limit: limit}
	b.cond = sync.NewCond(&b.mu)
	return b
}

// acquire waits until n bytes fit (or ctx ends: false).
func (b *byteBudget) acquire(ctx context.Context, n int) bool {
	stop := context.AfterFunc(ctx, func() {
		b.mu.Lock()
		b.cond.Broadcast()
		b.mu.Unlock()
	})
	defer stop()
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.used > 0 && b.used+n > b.limit {
		if ctx.Err() != nil {
			return false
		}
		b.cond.Wait()
	}
	b.used += n
	return true
}

// release returns n bytes.
func (b *byteBudget) release(n int) {
	b.mu.Lock()
	b.used -= n
	b.cond.Broadcast()
	b.mu.Unlock()
}

// readBudget is the bytes a sync or a rotation holds read and not yet
// passed on.
const readBudget = 64 << 20
