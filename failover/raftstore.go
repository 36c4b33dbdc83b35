package failover

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

// Files and settings of a voter's data dir (Config.DataDir).
const (
	// raftDBFile holds raft's log and stable store (term, vote): a
	// raft-boltdb BoltStore.
	raftDBFile = "raft.db"
	// snapshotsRetained: raft.FileSnapshotStore keeps this many snapshots
	// under DataDir/snapshots.
	snapshotsRetained = 2
	// boltOpenTimeout bounds waiting for raft.db's file lock: a second
	// process on the same data dir fails to start instead of hanging.
	boltOpenTimeout = time.Second
	// voterIDKey, in the stable store, names the voter the data dir belongs
	// to: a dir copied or pointed at by another node is refused (two voters
	// with one vote record could each vote in the same term).
	voterIDKey = "mirrorproxy_voter_id"
)

// raftStores are a voter's raft log, stable and snapshot stores: on disk
// under a data dir, or in memory.
type raftStores struct {
	logs   raft.LogStore
	stable raft.StableStore
	snaps  raft.SnapshotStore
	bolt   *raftboltdb.BoltStore // nil in memory
}

// openRaftStores opens voter id's stores in dir, creating the dir (0700)
// and its files when new. An empty dir gives raft's in-memory stores.
func openRaftStores(dir, id string, logger hclog.Logger) (*raftStores, error) {
	if dir == "" {
		m := raft.NewInmemStore()
		return &raftStores{logs: m, stable: m, snaps: raft.NewInmemSnapshotStore()}, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("failover: data dir: %w", err)
	}
	path := filepath.Join(dir, raftDBFile)
	db, err := raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: &bbolt.Options{
		Timeout: boltOpenTimeout, FreelistType: bbolt.FreelistArrayType,
	}})
	if errors.Is(err, bbolt.ErrTimeout) {
		return nil, fmt.Errorf("failover: %s is locked: another process uses data dir %s", path, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("failover: open %s: %w", path, err)
	}
	if err := claimDataDir(db, dir, id); err != nil {
		db.Close()
		return nil, err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, snapshotsRetained, logger)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("failover: snapshot store in %s: %w", dir, err)
	}
	return &raftStores{logs: db, stable: db, snaps: snaps, bolt: db}, nil
}

// claimDataDir records id as the data dir's voter, or checks that it is.
func claimDataDir(db *raftboltdb.BoltStore, dir, id string) error {
	owner, err := db.Get([]byte(voterIDKey))
	switch {
	case errors.Is(err, raftboltdb.ErrKeyNotFound):
		if err := db.Set([]byte(voterIDKey), []byte(id)); err != nil {
			return fmt.Errorf("failover: data dir %s: %w", dir, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("failover: data dir %s: %w", dir, err)
	case string(owner) != id:
		return fmt.Errorf("failover: data dir %s belongs to voter %q, not %q: give each node its own", dir, owner, id)
	}
	return nil
}

// existing reports whether the stores hold raft state from an earlier run
// (a term, log entries or a snapshot).
func (s *raftStores) existing() (bool, error) {
	ok, err := raft.HasExistingState(s.logs, s.stable, s.snaps)
	if err != nil {
		return false, fmt.Errorf("failover: reading raft state: %w", err)
	}
	return ok, nil
}

// close closes the on-disk store; raft must have shut down.
func (s *raftStores) close() error {
	if s.bolt == nil {
		return nil
	}
	return s.bolt.Close()
}
