package failover

import "time"

// Lease tells a member whether it is still in touch with the raft majority.
// A master checks it before confirming or delivering: once it is invalid the
// member must fence itself (DESIGN §5 invariant 3). The lease is valid while
// the member is the raft leader (hashicorp/raft steps a leader down when it
// has not reached a quorum within LeaderLeaseTimeout) or a follower that
// heard from the leader within Duration.
type Lease struct {
	Duration time.Duration
	// state reports (isLeader, last contact with the leader).
	state func() (bool, time.Time)
}

// ValidAt reports whether the lease holds at now.
func (l Lease) ValidAt(now time.Time) bool {
	if l.state == nil {
		return false
	}
	leader, last := l.state()
	return leader || (!last.IsZero() && now.Sub(last) < l.Duration)
}

// Valid reports whether the lease holds now.
func (l Lease) Valid() bool { return l.ValidAt(time.Now()) }
