package failover

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/hashicorp/raft"
)

// Command kinds stored in the raft log.
const (
	CmdJoin         = "join"          // admit Member (a new incarnation if its ID is present)
	CmdRemove       = "remove"        // drop IDs (failure or leave), electing a master if needed
	CmdSetSynced    = "set-synced"    // set Synced[Queue] = IDs
	CmdForgetSynced = "forget-synced" // drop Queue from Synced (it was deleted)
	CmdHandover     = "handover"      // controlled master change to a synced member
)

// Command is one raft log entry.
type Command struct {
	Kind string `json:"kind"`
	// IfEpoch, when non-zero, applies the command only if the view is
	// still at that epoch (a decision taken on a stale view is void).
	IfEpoch         uint64   `json:"if_epoch,omitempty"`
	Member          Member   `json:"member,omitzero"`
	IDs             []string `json:"ids,omitempty"`
	Queue           string   `json:"queue,omitempty"`
	Progress        Progress `json:"progress,omitempty"`
	PromoteUnsynced bool     `json:"promote_unsynced,omitempty"`
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
		n.Epoch++
		n.Members = slices.DeleteFunc(n.Members, func(m Member) bool { return m.ID == cmd.Member.ID })
		dropSynced(&n, cmd.Member.ID)
		m := cmd.Member
		m.JoinEpoch = n.Epoch
		n.Members = append(n.Members, m)
		if n.Master == cmd.Member.ID || n.Master == "" {
			// A rejoining master starts empty like any mirror; an empty
			// group takes its first member as master.
			n.Master = ""
			if len(n.Members) == 1 {
				n.Master = m.ID
			} else {
				n.Master = ElectMaster(withoutID(n, m.ID), cmd.Progress, cmd.PromoteUnsynced)
			}
		}
	case CmdRemove:
		before := len(n.Members)
		n.Members = slices.DeleteFunc(n.Members, func(m Member) bool { return slices.Contains(cmd.IDs, m.ID) })
		if len(n.Members) == before {
			return v, fmt.Errorf("%w: %v", ErrNoMember, cmd.IDs)
		}
		for _, id := range cmd.IDs {
			dropSynced(&n, id)
		}
		n.Epoch++
		if slices.Contains(cmd.IDs, n.Master) {
			n.Master = ElectMaster(n, cmd.Progress, cmd.PromoteUnsynced)
		}
	case CmdSetSynced:
		if n.Synced == nil {
			n.Synced = map[string][]string{}
		}
		var ids []string
		for _, id := range cmd.IDs {
			if _, ok := n.Member(id); ok {
				ids = append(ids, id)
			}
		}
		n.Synced[cmd.Queue] = ids
	case CmdForgetSynced:
		delete(n.Synced, cmd.Queue)
	case CmdHandover:
		if len(cmd.IDs) != 1 {
			return v, fmt.Errorf("%w: handover needs one target", ErrBadCommand)
		}
		id := cmd.IDs[0]
		if _, ok := n.Member(id); !ok {
			return v, fmt.Errorf("%w: %s", ErrNoMember, id)
		}
		if !synced(n, id) {
			return v, fmt.Errorf("%w: %s", ErrNotSynced, id)
		}
		n.Master = id
		n.Epoch++
	default:
		return v, fmt.Errorf("%w: kind %q", ErrBadCommand, cmd.Kind)
	}
	return n, nil
}

func withoutID(v View, id string) View {
	w := v.clone()
	w.Members = slices.DeleteFunc(w.Members, func(m Member) bool { return m.ID == id })
	return w
}

func dropSynced(v *View, id string) {
	for q, ids := range v.Synced {
		v.Synced[q] = slices.DeleteFunc(ids, func(x string) bool { return x == id })
	}
}

// FSM is the raft state machine holding the view. raft calls Apply,
// Snapshot and Restore from one goroutine; View may be called concurrently.
type FSM struct {
	mu       sync.Mutex
	view     View
	onChange func(View) // called after each change, outside mu, in order
}

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
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s snapshot) Release() {}
