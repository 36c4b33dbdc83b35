package failover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/gm"
)

// Config configures a view Service: one raft voter, a sidecar or a witness.
type Config struct {
	ID string
	// RaftListener accepts raft peers; its address is this voter's raft
	// address. The service closes it.
	RaftListener net.Listener
	// Auth authenticates raft peers (the same handshake as gm links).
	Auth gm.AuthConfig
	// Bootstrap, set on exactly one voter of a new group, starts the raft
	// cluster with Voters (this voter must be among them). A voter that
	// finds raft state in DataDir never bootstraps again.
	Bootstrap bool
	Voters    []Voter
	// DataDir, if set, keeps this voter's raft state on disk: log and
	// stable store (term, vote) in DataDir/raft.db (raft-boltdb), snapshots
	// under DataDir/snapshots (the last 2). The dir is created 0700 and
	// belongs to this voter ID. A voter restarted on its DataDir and its
	// raft address is the same voter: it catches up on the views committed
	// meanwhile, and a whole group restarted keeps its last view. Empty
	// keeps everything in memory: a restarted voter comes back as a new
	// voter (see docs/views.md).
	DataDir string
	// FailureTimeout: a member not heard from for this long is suspected
	// and removed from the view by the leader (default 2s). It must exceed
	// LeaseDuration so a cut-off master has fenced itself first.
	FailureTimeout time.Duration
	// LeaseDuration: how long a follower's lease outlives its last contact
	// with the leader (default 1s).
	LeaseDuration time.Duration
	// CheckInterval: how often the leader looks for suspects (default 50ms).
	CheckInterval time.Duration
	// Witness marks a voter with no broker and no ring seat: it votes (so
	// two sidecars and a witness survive the loss of either sidecar) but
	// hears no heartbeats, so it never keeps the raft leadership: elected,
	// it hands leadership to another voter at once.
	Witness bool
	// PromoteUnsynced mirrors ha-promote-on-failure: always.
	PromoteUnsynced bool
	// Progress, if set, reports members' applied counts for elections.
	Progress func() Progress
	// OnView, if set, receives every committed view in order (from raft's
	// FSM goroutine; do not block).
	OnView func(View)
	// Raft tunes hashicorp/raft; nil takes fast defaults suited to a LAN.
	Raft   *raft.Config
	Logger zerolog.Logger
}

// Voter is a raft voter: a sidecar or a witness.
type Voter struct {
	ID       string
	RaftAddr string
}

// Errors from the Service.
var (
	ErrNotLeader = errors.New("failover: not the raft leader")
)

// Service keeps the view in raft, detects failed members from heartbeats
// and, on the leader, commits the next view. Its raft state is on disk with
// Config.DataDir, else in memory (a voter that restarts then comes back as
// a new voter; see docs/views.md).
type Service struct {
	cfg    Config
	log    zerolog.Logger
	fsm    *FSM
	raft   *raft.Raft
	trans  *raft.NetworkTransport
	stream *authStream
	stores *raftStores

	mu  sync.Mutex
	det *Detector

	// caughtUpTerm is the raft term in which this voter, as leader, saw its
	// FSM apply every entry committed before (a barrier): IsLeader holds
	// only then, so a leader's decisions never rest on a view it has not
	// caught up to (after a restart, the FSM replays the log only once the
	// commit index is known).
	caughtUpTerm atomic.Uint64

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// Start starts the voter.
func Start(cfg Config) (*Service, error) {
	if cfg.ID == "" || cfg.RaftListener == nil {
		return nil, errors.New("failover: config needs ID and RaftListener")
	}
	if err := cfg.Auth.Validate(); err != nil {
		return nil, err
	}
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&cfg.FailureTimeout, 2*time.Second)
	def(&cfg.LeaseDuration, time.Second)
	def(&cfg.CheckInterval, 50*time.Millisecond)
	if cfg.FailureTimeout <= cfg.LeaseDuration {
		return nil, fmt.Errorf("failover: FailureTimeout %v must exceed LeaseDuration %v", cfg.FailureTimeout, cfg.LeaseDuration)
	}
	log := cfg.Logger.With().Str("voter", cfg.ID).Logger()
	rc := cfg.Raft
	if rc == nil {
		rc = raft.DefaultConfig()
		rc.HeartbeatTimeout = 200 * time.Millisecond
		rc.ElectionTimeout = 200 * time.Millisecond
		rc.LeaderLeaseTimeout = 150 * time.Millisecond
		rc.CommitTimeout = 5 * time.Millisecond
	}
	rc.LocalID = raft.ServerID(cfg.ID)
	hl := hclog.New(&hclog.LoggerOptions{Name: "raft", Output: zerologWriter{log}, Level: hclog.Warn})
	rc.Logger = hl
	s := &Service{cfg: cfg, log: log, det: NewDetector(cfg.FailureTimeout)}
	s.fsm = NewFSM(s.viewChanged)
	s.stream = newAuthStream(cfg.RaftListener, cfg.Auth, cfg.ID, log)
	s.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: s.stream, MaxPool: 3, Timeout: 2 * time.Second, Logger: hl,
	})
	stores, err := openRaftStores(cfg.DataDir, cfg.ID, hl)
	if err != nil {
		s.trans.Close()
		return nil, err
	}
	s.stores = stores
	existing, err := stores.existing()
	if err != nil {
		s.trans.Close()
		stores.close()
		return nil, err
	}
	// With existing state, NewRaft restores the latest snapshot into the
	// FSM (OnView sees its view); later entries are applied once this
	// voter learns the commit index from a leader, or as leader.
	r, err := raft.NewRaft(rc, s.fsm, stores.logs, stores.stable, stores.snaps, s.trans)
	if err != nil {
		s.trans.Close()
		stores.close()
		return nil, fmt.Errorf("failover: start raft: %w", err)
	}
	s.raft = r
	if existing {
		log.Info().Str("data_dir", cfg.DataDir).Bool("bootstrap_voter", cfg.Bootstrap).
			Uint64("view_epoch", s.fsm.View().Epoch).
			Msg("raft state found: rejoining as the same voter, not bootstrapping")
	}
	if cfg.Bootstrap && !existing {
		var servers []raft.Server
		for _, v := range cfg.Voters {
			servers = append(servers, raft.Server{ID: raft.ServerID(v.ID), Address: raft.ServerAddress(v.RaftAddr)})
		}
		if err := r.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
			s.Close()
			return nil, fmt.Errorf("failover: bootstrap: %w", err)
		}
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.leaderLoop()
	}()
	return s, nil
}

// Close shuts raft down, waits for the service's goroutines and closes
// the raft store. Closing twice returns the first result.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		if s.cancel != nil {
			s.cancel()
		}
		s.wg.Wait()
		err := s.raft.Shutdown().Error()
		if cerr := s.trans.Close(); err == nil {
			err = cerr
		}
		if cerr := s.stores.close(); err == nil {
			err = cerr
		}
		s.closeErr = err
	})
	return s.closeErr
}

// View returns the latest view this voter applied.
func (s *Service) View() View { return s.fsm.View() }

// Lease returns this voter's lease (see Lease).
func (s *Service) Lease() Lease {
	return Lease{Duration: s.cfg.LeaseDuration, state: func() (bool, time.Time) {
		return s.raft.State() == raft.Leader, s.raft.LastContact()
	}}
}

// IsLeader reports whether this voter is the raft leader and has applied
// every view committed before its leadership, so View is the group's latest
// (the leader loop checks within CheckInterval and catches up with one
// commit, a barrier; until then IsLeader is false and Leader may already
// name this voter).
func (s *Service) IsLeader() bool { return s.raft.State() == raft.Leader && s.caughtUp() }

func (s *Service) caughtUp() bool { return s.caughtUpTerm.Load() == s.raft.CurrentTerm() }

// Leader returns the leader's raft address and ID, if known.
func (s *Service) Leader() (string, string) {
	a, id := s.raft.LeaderWithID()
	return string(a), string(id)
}

// Heard records a heartbeat from a member (wire gm.NodeConfig.OnHeartbeat
// here). Safe for concurrent use.
func (s *Service) Heard(id string) {
	s.mu.Lock()
	s.det.Heard(id, time.Now())
	s.mu.Unlock()
}

// Apply commits cmd through raft on the leader and returns the new view.
func (s *Service) Apply(ctx context.Context, cmd Command) (View, error) {
	if s.raft.State() != raft.Leader {
		return View{}, ErrNotLeader
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return View{}, err
	}
	timeout := 5 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	f := s.raft.Apply(b, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return View{}, ErrNotLeader
		}
		return View{}, err
	}
	switch r := f.Response().(type) {
	case error:
		return View{}, r
	case View:
		return r, nil
	}
	return View{}, fmt.Errorf("failover: unexpected apply result %T", f.Response())
}

// Join admits m as a new incarnation (leader only).
func (s *Service) Join(ctx context.Context, m Member) (View, error) {
	return s.Apply(ctx, Command{Kind: CmdJoin, Member: m, Progress: s.progress(), PromoteUnsynced: s.cfg.PromoteUnsynced})
}

// Leave removes id from the view (leader only).
func (s *Service) Leave(ctx context.Context, id string) (View, error) {
	return s.Apply(ctx, Command{Kind: CmdRemove, IDs: []string{id}, Progress: s.progress(), PromoteUnsynced: s.cfg.PromoteUnsynced})
}

// AddVoter adds a raft voter (leader only).
func (s *Service) AddVoter(v Voter) error {
	return s.raft.AddVoter(raft.ServerID(v.ID), raft.ServerAddress(v.RaftAddr), 0, 5*time.Second).Error()
}

func (s *Service) progress() Progress {
	if s.cfg.Progress == nil {
		return nil
	}
	return s.cfg.Progress()
}

func (s *Service) viewChanged(v View) {
	s.mu.Lock()
	now := time.Now()
	watched := map[string]bool{}
	for _, m := range v.Members {
		if m.ID != s.cfg.ID {
			s.det.Watch(m.ID, now)
			watched[m.ID] = true
		}
	}
	for _, id := range slices.Collect(maps.Keys(s.det.last)) {
		if !watched[id] {
			s.det.Forget(id)
		}
	}
	s.mu.Unlock()
	s.log.Info().Uint64("epoch", v.Epoch).Int("members", len(v.Members)).Str("master", v.Master).Msg("view committed")
	if s.cfg.OnView != nil {
		s.cfg.OnView(v)
	}
}

// leaderLoop: on the leader, remove suspected members from the view.
func (s *Service) leaderLoop() {
	t := time.NewTicker(s.cfg.CheckInterval)
	defer t.Stop()
	wasLeader := false
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		leader := s.raft.State() == raft.Leader
		if leader && !wasLeader {
			s.mu.Lock()
			s.det.Lead(time.Now())
			s.mu.Unlock()
		}
		wasLeader = leader
		if !leader {
			continue
		}
		if !s.caughtUp() {
			// Apply everything committed before deciding on the view.
			term := s.raft.CurrentTerm()
			if err := s.raft.Barrier(s.cfg.FailureTimeout).Error(); err != nil {
				s.log.Debug().Err(err).Msg("new raft leader could not catch up with the log; retrying")
				continue
			}
			s.caughtUpTerm.Store(term)
		}
		v := s.View()
		_, member := v.Member(s.cfg.ID)
		if s.cfg.Witness || !member && len(v.Members) > 0 {
			// A witness, or a sidecar that is not in the view (it left:
			// its broker is down), hears no heartbeats from the ring, so
			// it cannot tell who is alive: leave the leading to a voter
			// that hears the ring.
			if err := s.raft.LeadershipTransfer().Error(); err != nil {
				s.log.Warn().Err(err).Msg("a voter outside the ring could not hand over the raft leadership; retrying")
			} else {
				s.log.Info().Msg("a voter outside the ring handed the raft leadership to a member")
			}
			continue
		}
		s.mu.Lock()
		sus := s.det.Suspects(time.Now())
		s.mu.Unlock()
		var drop []string
		for _, id := range sus {
			if _, ok := v.Member(id); ok {
				drop = append(drop, id)
			}
		}
		if len(drop) == 0 {
			continue
		}
		slices.Sort(drop)
		if len(drop) >= len(v.Members) {
			continue // never empty the group on suspicion alone
		}
		ctx, cancel := context.WithTimeout(s.ctx, 2*time.Second)
		nv, err := s.Apply(ctx, Command{Kind: CmdRemove, IfEpoch: v.Epoch, IDs: drop,
			Progress: s.progress(), PromoteUnsynced: s.cfg.PromoteUnsynced})
		cancel()
		if err != nil {
			s.log.Warn().Err(err).Strs("suspects", drop).Msg("could not commit view without suspects")
			continue
		}
		s.log.Warn().Strs("removed", drop).Uint64("epoch", nv.Epoch).Str("master", nv.Master).Msg("failed members removed from view")
	}
}

// zerologWriter routes hclog output to zerolog.
type zerologWriter struct{ log zerolog.Logger }

func (w zerologWriter) Write(p []byte) (int, error) {
	w.log.Debug().Msg(string(p))
	return len(p), nil
}

var _ io.Writer = zerologWriter{}
