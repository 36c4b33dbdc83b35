package failover

// RaftStatus is this voter's raft state, for status pages and metrics.
type RaftStatus struct {
	// State is raft's: Follower, Candidate, Leader or Shutdown.
	State string `json:"state"`
	// Leader is the leader's voter ID ("" while none is known).
	Leader string `json:"leader"`
	// Term is the current raft term.
	Term uint64 `json:"term"`
	// LeaseHeld: this voter heard from a majority recently (a master acts
	// only while it holds it).
	LeaseHeld bool `json:"lease_held"`
}

// RaftStatus returns this voter's raft state. Safe for concurrent use;
// it takes none of raft's long paths.
func (s *Service) RaftStatus() RaftStatus {
	_, id := s.raft.LeaderWithID()
	return RaftStatus{State: s.raft.State().String(), Leader: string(id), Term: s.raft.CurrentTerm(), LeaseHeld: s.LeaseHeld()}
}
