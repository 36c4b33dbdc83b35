package group

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mirrorproxy/mirrorproxy/failover"
	"github.com/mirrorproxy/mirrorproxy/failover/peerlink"
	"github.com/mirrorproxy/mirrorproxy/replicate"
)

// handoverTimeout bounds a graceful handover: a master that asked to hand
// over and sees no view naming another master by then serves again (or,
// shutting down, leaves anyway).
const handoverTimeout = 10 * time.Second

// Errors of TransferMaster. The admin API answers ErrUnknownMember with
// 404 and the others with 409.
var (
	ErrUnknownMember  = errors.New("group: no such member in the view")
	ErrCannotHandOver = errors.New("group: cannot hand over")
)

// TransferMaster moves the master role to target (a synced member; ""
// lets the raft leader choose the synced member that applied the most) as
// a graceful handover does: the master stops confirming and delivering,
// the leader names target, target applies the old master's tail,
// requeues its copies in order and serves; the old master mirrors again
// from empty. It returns the view that names the new master. Any member
// takes the request: a mirror passes it to the master over the peer link.
//
// What it checks before anything stops: the target is a member, is not
// already the master, and is synced for every mirrored queue (a handover
// never loses a confirmed message). If the view names no other master
// within the role's handover timeout (the target lost its broker
// meanwhile, say), the old master serves again and the error says so.
func (g *Group) TransferMaster(ctx context.Context, target string) (failover.View, error) {
	return g.transferMaster(ctx, target, false)
}

// transferMaster: forwarded is true on the master for a mirror's request
// (it is not passed on again).
func (g *Group) transferMaster(ctx context.Context, target string, forwarded bool) (failover.View, error) {
	v := g.View()
	if v.Master == "" {
		return v, fmt.Errorf("%w: the view names no master", ErrCannotHandOver)
	}
	if err := checkTransfer(v, target); err != nil {
		return v, err
	}
	if target == v.Master {
		return v, nil
	}
	if v.Master != g.cfg.Self {
		if forwarded {
			return v, fmt.Errorf("%w: ask the master, %q", ErrNotMaster, v.Master)
		}
		b, err := json.Marshal(leaderRequest{Kind: reqTransfer, Target: target})
		if err != nil {
			return v, err
		}
		ans, err := g.links.Request(ctx, v.Master, b)
		var re *peerlink.RemoteError
		switch {
		case errors.As(err, &re):
			return v, fmt.Errorf("%w: the master %s answered: %s", ErrCannotHandOver, v.Master,
				strings.TrimPrefix(re.Text, ErrCannotHandOver.Error()+": "))
		case err != nil:
			return v, fmt.Errorf("%w: cannot reach the master %s: %w", ErrCannotHandOver, v.Master, err) //nolint:errorlint // both: the admin API answers ErrCannotHandOver with 409, callers match the network error
		}
		var nv failover.View
		if err := json.Unmarshal(ans, &nv); err != nil {
			return v, fmt.Errorf("the master's answer: %w", err)
		}
		return nv, nil
	}
	if !g.IsMaster() {
		return v, fmt.Errorf("%w: this node is named master but does not serve yet (%s)", ErrCannotHandOver, g.RoleState())
	}
	g.log.Info().Str("target", target).Uint64("epoch", v.Epoch).Msg("handing the master role over on request")
	g.post(input{handover: &target})
	// The role asks the leader until a view names another master, or gives
	// up after its handover timeout and serves again.
	wait, cancel := context.WithTimeout(ctx, handoverTimeout+2*time.Second)
	defer cancel()
	for {
		g.viewMu.Lock()
		cur, ch := g.view, g.viewCh
		g.viewMu.Unlock()
		if cur.Master != "" && cur.Master != g.cfg.Self {
			return cur, nil
		}
		select {
		case <-ch:
		case <-wait.Done():
			if ctx.Err() != nil {
				return cur, ctx.Err()
			}
			return cur, fmt.Errorf("%w: no view named another master within %v; %s serves again", ErrCannotHandOver,
				handoverTimeout, g.cfg.Self)
		case <-g.stopped:
			return cur, ErrClosed
		}
	}
}

// checkTransfer refuses a handover the leader would refuse, before the
// master stops serving for it.
func checkTransfer(v failover.View, target string) error {
	if target == "" {
		others := v
		others.Members = nil
		for _, m := range v.Members {
			if m.ID != v.Master {
				others.Members = append(others.Members, m)
			}
		}
		if len(others.Members) == 0 {
			return fmt.Errorf("%w: %s is the only member", ErrCannotHandOver, v.Master)
		}
		if failover.Elect(others, nil, false).Master == "" {
			return fmt.Errorf("%w: no mirror is synced for every mirrored queue (sync one first: ctl sync_queue)", ErrCannotHandOver)
		}
		return nil
	}
	if _, ok := v.Member(target); !ok {
		return fmt.Errorf("%w: %q (members: %s)", ErrUnknownMember, target, memberIDs(v))
	}
	if target == v.Master {
		return nil
	}
	if q := v.UnsyncedFor(target); len(q) > 0 {
		return fmt.Errorf("%w: %s is not synced for %s (sync first: ctl sync_queue)", ErrCannotHandOver, target, queueList(q))
	}
	return nil
}

func memberIDs(v failover.View) string {
	ids := make([]string, len(v.Members))
	for i, m := range v.Members {
		ids[i] = m.ID
	}
	return strings.Join(ids, ", ")
}

// queueList names the queues of view keys (replicate.QueueKey) for people.
func queueList(keys []string) string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = replicate.QueueKeyText(k)
	}
	return strings.Join(out, ", ")
}
