package replicate

import "sync"

// DefaultStoredKeys is how many front keys a node remembers by default.
// A key matters until its publish is confirmed to the client; confirms
// wait for every member, so the keys a moved session may send again are
// those of its unconfirmed publishes (each session holds at most
// proxy.Options.MaxUnconfirmed bytes of them). The bound is far above
// what a ring window and the sessions' unconfirmed publishes hold.
const DefaultStoredKeys = 1 << 18

// StoredKeys remembers the front keys (proxy.Publish.Key) of the newest
// publishes a node stored, as the master or as a mirror applying the
// master's stream, so that a moved session's re-sent publish is dropped
// when its message is here already (docs/FAILOVER.md, "Publishes re-sent
// after a move"). Front keys are allocated at basic.publish and reach the
// ring when the content completes, so they follow no order: a set, with
// the oldest forgotten past the bound. One node's StoredKeys outlives its
// roles: the same one is given to its Mirror and to its Master.
type StoredKeys struct {
	mu   sync.Mutex
	set  map[uint64]struct{}
	ring []uint64 // keys in arrival order, a circular buffer
	next int
	full bool
}

// NewStoredKeys returns a set that remembers the newest bound keys
// (DefaultStoredKeys when max <= 0).
func NewStoredKeys(bound int) *StoredKeys {
	if bound <= 0 {
		bound = DefaultStoredKeys
	}
	return &StoredKeys{set: make(map[uint64]struct{}, bound), ring: make([]uint64, bound)}
}

// Add remembers key (0, no key, is ignored); past the bound the oldest key
// is forgotten. A nil set remembers nothing.
func (s *StoredKeys) Add(key uint64) {
	if s == nil || key == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.set[key]; ok {
		return
	}
	if s.full {
		delete(s.set, s.ring[s.next])
	}
	s.ring[s.next] = key
	s.set[key] = struct{}{}
	s.next++
	if s.next == len(s.ring) {
		s.next, s.full = 0, true
	}
}

// Has reports whether key is remembered.
func (s *StoredKeys) Has(key uint64) bool {
	if s == nil || key == 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.set[key]
	return ok
}

// Len reports how many keys are remembered.
func (s *StoredKeys) Len() int {
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.set)
}
