package failover

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// Command kinds stored in the raft log.
const (
	CmdJoin         = "join"          // admit Member (a new incarnation if its ID is present)
	CmdRemove       = "remove"        // drop IDs (failure or leave), electing a master if needed
	CmdSetSynced    = "set-synced"    // set Synced[Queue] = IDs and Mirrors[Queue] = Mirrors
	CmdForgetSynced = "forget-synced" // drop Queue from Synced, Mirrors, MasterUnsynced (it was deleted)
	CmdHandover     = "handover"      // controlled master change to a synced member (to the master itself: keep it)
	CmdForceQueue   = "force-queue"   // an operator accepts the loss: drop Queue from MasterUnsynced
)

// Command is one raft log entry.
type Command struct {
	Kind string `json:"kind"`
	// IfEpoch, when non-zero, applies the command only if the view is
	// still at that epoch (a decision taken on a stale view is void).
	IfEpoch uint64   `json:"if_epoch,omitempty"`
	Member  Member   `json:"member,omitzero"`
	IDs     []string `json:"ids,omitempty"`
	Queue   string   `json:"queue,omitempty"`
	// Mirrors (set-synced) are the members Queue's policy places a mirror
	// on, the master excluded; empty for a queue with no mirror.
	Mirrors []string `json:"mirrors,omitempty"`
	// Progress (remove, join) is each member's ops applied, supplied by
	// the raft leader when it decides: the election reads it from here,
	// never from the replica, so every replica elects the same member.
	Progress Progress `json:"progress,omitempty"`
	// PromoteUnsynced (remove, join) allows electing a member that is not
	// synced for every mirrored queue (ha-promote-on-failure); the queues
	// it lacks go to View.MasterUnsynced.
	PromoteUnsynced bool `json:"promote_unsynced,omitempty"`
}

// Errors from applying a command.
var (
	ErrStaleEpoch = errors.New("failover: view changed since the decision")
	ErrNoMember   = errors.New("failover: no such member")
	ErrNotSynced  = errors.New("failover: handover target is not synced")
	ErrBadCommand = errors.New("failover: bad command")
)

// Next returns the view after cmd. It is pure: the same view and command
// give the same result on every replica.
func Next(v View, cmd Command) (View, error) {
	if cmd.IfEpoch != 0 && cmd.IfEpoch != v.Epoch {
		return v, fmt.Errorf("%w: at %d, decided at %d", ErrStaleEpoch, v.Epoch, cmd.IfEpoch)
	}
	n := v.clone()
	switch cmd.Kind {
	case CmdJoin:
		if cmd.Member.ID == "" {
			return v, fmt.Errorf("%w: join without an id", ErrBadCommand)
		}
		if old, ok := v.Member(cmd.Member.ID); ok && cmd.Member.Boot != "" && old.Boot == cmd.Member.Boot {
			return v, nil // the same process asked again: it is admitted already
		}
		n.Epoch++
		n.Members = slices.DeleteFunc(n.Members, func(m Member) bool { return m.ID == cmd.Member.ID })
		m := cmd.Member
		m.JoinEpoch = n.Epoch
		// The elections run before the old incarnation leaves the synced
		// sets, so its queues still count as mirrored.
		switch {
		case n.Master == m.ID:
			// A rejoining master (a restart) hands the role to a member
			// synced for every mirrored queue and mirrors again from
			// empty. With none, it stays master: its broker holds what no
			// member has, so it beats any unsynced member.
			e := Elect(n, cmd.Progress, false)
			if e.Master == "" {
				e = Election{Master: m.ID}
			}
			setMaster(&n, e)
		case n.Master == "" && len(n.LostQueues) > 0:
			// The group waits for the master it lost (LostMaster).
			switch {
			case m.ID == n.LostMaster:
				setMaster(&n, Election{Master: m.ID})
			case cmd.PromoteUnsynced:
				e := Elect(n, cmd.Progress, true)
				if e.Master == "" {
					e = Election{Master: m.ID}
				}
				lost := n.LostQueues
				setMaster(&n, e)
				addUnsynced(&n, lost)
			}
		case n.Master == "":
			// An empty group takes its first member as master.
			if len(n.Members) == 0 {
				setMaster(&n, Election{Master: m.ID})
			} else {
				setMaster(&n, Elect(n, cmd.Progress, cmd.PromoteUnsynced))
			}
		}
		dropSynced(&n, cmd.Member.ID)
		n.Members = append(n.Members, m)
	case CmdRemove:
		before := len(n.Members)
		n.Members = slices.DeleteFunc(n.Members, func(m Member) bool { return slices.Contains(cmd.IDs, m.ID) })
		if len(n.Members) == before {
			return v, fmt.Errorf("%w: %v", ErrNoMember, cmd.IDs)
		}
		n.Epoch++
		if lost := n.Master; slices.Contains(cmd.IDs, lost) {
			// Elect among the survivors while the departed are still in
			// the synced sets: a queue whose synced mirrors all left is
			// still mirrored, and the new master lacks it. With no one
			// electable the group waits for the lost master.
			queues := n.MirroredQueues()
			setMaster(&n, Elect(n, cmd.Progress, cmd.PromoteUnsynced))
			if n.Master == "" && len(queues) > 0 {
				n.LostMaster, n.LostQueues = lost, queues
			}
		}
		for _, id := range cmd.IDs {
			dropSynced(&n, id)
		}
	case CmdSetSynced:
		if n.Synced == nil {
			n.Synced = map[string][]string{}
		}
		n.Synced[cmd.Queue] = onlyMembers(n, cmd.IDs)
		if mirrors := onlyMembers(n, cmd.Mirrors); len(mirrors) > 0 {
			if n.Mirrors == nil {
				n.Mirrors = map[string][]string{}
			}
			n.Mirrors[cmd.Queue] = mirrors
		} else {
			delete(n.Mirrors, cmd.Queue)
		}
	case CmdForgetSynced:
		delete(n.Synced, cmd.Queue)
		delete(n.Mirrors, cmd.Queue)
		n.MasterUnsynced = slices.DeleteFunc(n.MasterUnsynced, func(q string) bool { return q == cmd.Queue })
	case CmdForceQueue:
		if !slices.Contains(n.MasterUnsynced, cmd.Queue) {
			return v, fmt.Errorf("%w: queue %q is not unsynced on the master", ErrBadCommand, cmd.Queue)
		}
		n.MasterUnsynced = slices.DeleteFunc(n.MasterUnsynced, func(q string) bool { return q == cmd.Queue })
	case CmdHandover:
		if len(cmd.IDs) != 1 {
			return v, fmt.Errorf("%w: handover needs one target", ErrBadCommand)
		}
		id := cmd.IDs[0]
		if _, ok := n.Member(id); !ok {
			return v, fmt.Errorf("%w: %s", ErrNoMember, id)
		}
		if id == n.Master {
			// A stepping-down master that gave up waiting keeps the role:
			// the epoch moves on, so a handover decided at the old epoch
			// (IfEpoch) can no longer apply; MasterEpoch stays.
			n.Epoch++
			break
		}
		if q := n.UnsyncedFor(id); len(q) > 0 {
			return v, fmt.Errorf("%w: %s lacks %v", ErrNotSynced, id, q)
		}
		n.Epoch++
		setMaster(&n, Election{Master: id})
	default:
		return v, fmt.Errorf("%w: kind %q", ErrBadCommand, cmd.Kind)
	}
	return n, nil
}

// setMaster installs e's master in n (at n's epoch) and records the queues
// it lacks. The master is no mirror: it leaves the synced sets and mirror
// lists until the replication layer pushes its own. With no master
// elected the view keeps its MasterUnsynced.
func setMaster(n *View, e Election) {
	n.Master = e.Master
	n.MasterEpoch = n.Epoch
	addUnsynced(n, e.Unsynced)
	if e.Master != "" {
		dropSynced(n, e.Master)
		n.LostMaster, n.LostQueues = "", nil
	}
}

func onlyMembers(v View, ids []string) []string {
	var out []string
	for _, id := range ids {
		if _, ok := v.Member(id); ok && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

func dropSynced(v *View, id string) {
	for q, ids := range v.Synced {
		v.Synced[q] = slices.DeleteFunc(ids, func(x string) bool { return x == id })
	}
	for q, ids := range v.Mirrors {
		if ids = slices.DeleteFunc(ids, func(x string) bool { return x == id }); len(ids) > 0 {
			v.Mirrors[q] = ids
		} else {
			delete(v.Mirrors, q)
		}
	}
}

// FSM is the raft state machine holding the view. raft calls Apply,
// Snapshot and Restore from one goroutine; View may be called concurrently.
type FSM struct {
	mu       sync.Mutex
	view     View
	onChange func(View) // called after each change, outside mu, in order
	// applied is the index of the last log entry Apply finished (its
	// onChange included).
	applied atomic.Uint64
}

// Applied returns the index of the last log entry the FSM applied.
func (f *FSM) Applied() uint64 { return f.applied.Load() }

// NewFSM returns an FSM with an empty view; onChange (optional) sees every
// new view in log order.
func NewFSM(onChange func(View)) *FSM { return &FSM{onChange: onChange} }

// View returns the current view.
func (f *FSM) View() View {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.view.clone()
}

// Apply implements raft.FSM. It returns the new View or an error.
func (f *FSM) Apply(l *raft.Log) any {
	defer f.applied.Store(l.Index)
	var cmd Command
	if err := json.Unmarshal(l.Data, &cmd); err != nil {
		return fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	f.mu.Lock()
	n, err := Next(f.view, cmd)
	if err != nil {
		f.mu.Unlock()
		return err
	}
	f.view = n
	f.mu.Unlock()
	if f.onChange != nil {
		f.onChange(n.clone())
	}
	return n
}

// Snapshot implements raft.FSM.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	b, err := json.Marshal(f.View())
	if err != nil {
		return nil, err
	}
	return snapshot(b), nil
}

// Restore implements raft.FSM.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var v View
	if err := json.NewDecoder(rc).Decode(&v); err != nil {
		return fmt.Errorf("failover: restore view: %w", err)
	}
	f.mu.Lock()
	f.view = v
	f.mu.Unlock()
	if f.onChange != nil {
		f.onChange(v.clone())
	}
	return nil
}

type snapshot []byte

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		_ = sink.Cancel() // the write's error is what raft is told
		return err
	}
	return sink.Close()
}

func (s snapshot) Release() {}
