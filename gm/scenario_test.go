package gm

import "testing"

// Scripted view-change scenarios on the simulated network. Each runs over a
// handful of seeds (the network's drops, delays and duplicates vary) and
// then the full property checks of the simulation.

func scenarioConf(n int) simConf {
	return simConf{
		n: n, steps: 0, drop: 0.02, dup: 0.02, maxDelay: 4,
		propose: 0.5, apply: 0.6, detect: 15, viewDelay: 5, window: 32,
		noFaults: true, onlySender: true,
	}
}

func (s *sim) runSteps(k int) {
	for range k {
		s.step(true)
	}
}

func (s *sim) crash(id string) {
	nd := s.current[id]
	nd.alive = false
	s.logf("crash %v", nd.m)
}

func (s *sim) isolate(id string) {
	nd := s.current[id]
	nd.cutOff = true
	nd.cutAt = nd.proposed
	s.logf("isolate %v", nd.m)
}

// finish heals the network, quiesces and checks the properties.
func (s *sim) finish() {
	if !s.failed {
		s.run()
	}
}

// inFlight reports whether some op of sender is delivered by some members
// but not yet by all live ones (a lap in progress).
func (s *sim) inFlight(sender string) bool {
	snd := s.current[sender]
	return snd.proposed > 0 && snd.stable < snd.proposed
}

func forSeeds(t *testing.T, n int, body func(t *testing.T, s *sim)) {
	for seed := uint64(1); seed <= 40; seed++ {
		s := newSim(t, seed, scenarioConf(n))
		body(t, s)
		if s.failed || t.Failed() {
			t.Fatalf("scenario failed at seed %d", seed)
		}
	}
}

func TestScenarioMemberDiesMidLap(t *testing.T) {
	forSeeds(t, 4, func(t *testing.T, s *sim) {
		s.runSteps(20)
		if !s.inFlight("n0") {
			s.runSteps(1)
		}
		s.crash("n2") // the middle of the lap n0 -> n1 -> n2 -> n3
		s.runSteps(60)
		if s.view.Contains(Member{"n2", 1}) {
			t.Fatalf("seed %d: dead n2 still in view %v", s.seed, s.view)
		}
		s.finish()
	})
}

func TestScenarioSenderDiesMidLap(t *testing.T) {
	forSeeds(t, 4, func(t *testing.T, s *sim) {
		s.runSteps(20)
		s.crash("n0")
		s.runSteps(60)
		// Survivors converge on n0@1's stream: checked by finish.
		s.finish()
		for _, id := range []string{"n1", "n2", "n3"} {
			if s.current[id].ring.streams[Member{"n0", 1}] == nil {
				t.Fatalf("seed %d: %s knows nothing of the dead sender's stream", s.seed, id)
			}
		}
	})
}

func TestScenarioTwoDieAtOnce(t *testing.T) {
	forSeeds(t, 5, func(t *testing.T, s *sim) {
		s.runSteps(20)
		s.crash("n1")
		s.crash("n3")
		before := s.current["n0"].stable
		s.runSteps(80)
		if s.current["n0"].stable <= before {
			t.Fatalf("seed %d: sender made no progress after two members died", s.seed)
		}
		s.finish()
	})
}

func TestScenarioMemberRejoins(t *testing.T) {
	forSeeds(t, 3, func(t *testing.T, s *sim) {
		s.runSteps(20)
		s.crash("n1")
		s.runSteps(40)
		s.restart("n1")
		s.runSteps(40)
		nd := s.current["n1"]
		if nd.m.Inc <= 1 || !s.view.Contains(nd.m) {
			t.Fatalf("seed %d: n1 did not rejoin as a new incarnation: %v in %v", s.seed, nd.m, s.view)
		}
		s.finish()
		if nd.lastDel[Member{"n0", 1}] == 0 {
			t.Fatalf("seed %d: rejoined n1 got no ops", s.seed)
		}
	})
}

func TestScenarioPartitionIsolatesMaster(t *testing.T) {
	forSeeds(t, 5, func(t *testing.T, s *sim) {
		s.runSteps(20)
		s.isolate("n0")
		m := s.current["n0"]
		s.runSteps(60) // n0 keeps proposing; checkStable fails if any becomes stable
		if m.proposed == m.cutAt && m.ring.Unstable() < s.cfg.window {
			t.Fatalf("seed %d: isolated master proposed nothing", s.seed)
		}
		if s.view.Contains(m.m) {
			t.Fatalf("seed %d: majority kept the isolated master: %v", s.seed, s.view)
		}
		for _, id := range []string{"n1", "n2", "n3", "n4"} {
			if e := s.current[id].ring.Epoch(); e != s.view.Epoch {
				t.Fatalf("seed %d: %s on epoch %d, majority committed %d", s.seed, id, e, s.view.Epoch)
			}
		}
		if m.ring.Epoch() != 1 {
			t.Fatalf("seed %d: isolated master learned view %d", s.seed, m.ring.Epoch())
		}
		// n1 takes over as sender in the new view.
		s.cfg.onlySender = false
		s.finish()
	})
}
