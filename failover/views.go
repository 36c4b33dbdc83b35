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
	// cluster with Voters (this voter must be among them).
	Bootstrap bool
	Voters    []Voter
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
// and, on the leader, commits the next view. Stores are in memory: a voter
// that restarts comes back as a new voter (see docs/views.md).
type Service struct {
	cfg    Config
	log    zerolog.Logger
	fsm    *FSM
	raft   *raft.Raft
	trans  *raft.NetworkTransport
	stream *authStream

	mu  sync.Mutex
	det *Detector

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
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
	store := raft.NewInmemStore()
	r, err := raft.NewRaft(rc, s.fsm, store, store, raft.NewInmemSnapshotStore(), s.trans)
	if err != nil {
		s.trans.Close()
		return nil, fmt.Errorf("failover: start raft: %w", err)
	}
	s.raft = r
	if cfg.Bootstrap {
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

// Close shuts raft down and waits for the service's goroutines.
func (s *Service) Close() error {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	err := s.raft.Shutdown().Error()
	if cerr := s.trans.Close(); err == nil {
		err = cerr
	}
	return err
}

// View returns the latest view this voter applied.
func (s *Service) View() View { return s.fsm.View() }

// Lease returns this voter's lease (see Lease).
func (s *Service) Lease() Lease {
	return Lease{Duration: s.cfg.LeaseDuration, state: func() (bool, time.Time) {
		return s.raft.State() == raft.Leader, s.raft.LastContact()
	}}
}

// IsLeader reports whether this voter is the raft leader.
func (s *Service) IsLeader() bool { return s.raft.State() == raft.Leader }

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
			// A new leader gives everyone a full timeout from now.
			s.mu.Lock()
			now := time.Now()
			for id := range s.det.last {
				s.det.last[id] = now
			}
			s.mu.Unlock()
		}
		wasLeader = leader
		if !leader {
			continue
		}
		if s.cfg.Witness {
			// A witness cannot tell who is alive: leave the leading to a
			// voter that hears the ring.
			if err := s.raft.LeadershipTransfer().Error(); err != nil {
				s.log.Warn().Err(err).Msg("witness could not hand over the raft leadership; retrying")
			} else {
				s.log.Info().Msg("witness handed the raft leadership to a sidecar")
			}
			continue
		}
		v := s.View()
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
