package failover

import "time"

// Detector is a heartbeat failure detector as a pure state machine: its
// owner reports heartbeats (Heard) and asks who is suspected at a time
// (Suspects). It reads no clock and is not safe for concurrent use.
type Detector struct {
	timeout time.Duration
	last    map[string]time.Time
}

// NewDetector suspects a peer not heard from for timeout.
func NewDetector(timeout time.Duration) *Detector {
	return &Detector{timeout: timeout, last: map[string]time.Time{}}
}

// Watch starts watching peer as if heard at now (a new peer gets a full
// timeout); watching it again changes nothing.
func (d *Detector) Watch(peer string, now time.Time) {
	if _, ok := d.last[peer]; !ok {
		d.last[peer] = now
	}
}

// Lead is the owner's news that it just became the one who acts on
// suspicions (the raft leader). Peers heard within the timeout keep their
// time: a master that froze shortly before the election (often the old
// leader itself) is suspected when its own timeout runs out, not a whole
// timeout after the election. Peers last heard longer ago get a full
// timeout from now: what this node heard before it led may be stale (it
// did not have to watch them closely).
func (d *Detector) Lead(now time.Time) {
	for p, t := range d.last {
		if now.Sub(t) >= d.timeout {
			d.last[p] = now
		}
	}
}

// Forget stops watching peer.
func (d *Detector) Forget(peer string) { delete(d.last, peer) }

// Heard records a heartbeat (any frame) from a watched peer at now.
func (d *Detector) Heard(peer string, now time.Time) {
	if t, ok := d.last[peer]; ok && now.After(t) {
		d.last[peer] = now
	}
}

// Suspects returns the watched peers not heard from within the timeout.
func (d *Detector) Suspects(now time.Time) []string {
	var s []string
	for p, t := range d.last {
		if now.Sub(t) >= d.timeout {
			s = append(s, p)
		}
	}
	return s
}
