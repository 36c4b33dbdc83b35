package replicate

// SyncProgress is a running sync's progress: the messages copied to the
// mirrors so far, and those still ready in the master's queue when last
// asked. Its fraction done is Copied/(Copied+Remaining).
type SyncProgress struct {
	Copied, Remaining int64
}

// Fraction is the share of the queue copied, from 0 to 1.
func (p SyncProgress) Fraction() float64 {
	if p.Copied+p.Remaining == 0 {
		return 0
	}
	return float64(p.Copied) / float64(p.Copied+p.Remaining)
}

// SyncProgress reports the queue's running sync; ok is false when none
// runs.
func (m *Master) SyncProgress(vhost, queue string) (p SyncProgress, ok bool) {
	m.mu.Lock()
	r := m.sy.runs[qkey{vhost, queue}]
	m.mu.Unlock()
	if r == nil {
		return SyncProgress{}, false
	}
	return SyncProgress{Copied: r.copied.Load(), Remaining: r.ready.Load()}, true
}
