package replicate

import (
	"encoding/json"
	"fmt"
)

// applyPolicy changes the mirror's policies as the master did.
func (m *Mirror) applyPolicy(op *Op) error {
	ps := m.cfg.Policies
	if ps == nil {
		return nil
	}
	switch {
	case op.Name == "":
		var list []Policy
		if err := json.Unmarshal(op.Data, &list); err != nil {
			return fmt.Errorf("replicate: policy op: %w", err)
		}
		if err := ps.Replace(list); err != nil {
			return fmt.Errorf("replicate: policy op: %w", err)
		}
	case len(op.Data) == 0:
		if err := ps.Clear(op.Vhost, op.Name); err != nil {
			return fmt.Errorf("replicate: policy op: %w", err)
		}
	default:
		var p Policy
		if err := json.Unmarshal(op.Data, &p); err != nil {
			return fmt.Errorf("replicate: policy op: %w", err)
		}
		if err := ps.Set(p); err != nil {
			return fmt.Errorf("replicate: policy op: %w", err)
		}
	}
	return nil
}

func (m *Mirror) applySyncStart(v *vhostMirror, op *Op, done func(error)) {
	m.completeNow(v, done, nil)
}

func (m *Mirror) applySyncCopy(v *vhostMirror, op *Op, done func(error)) {
	m.completeNow(v, done, nil)
}

func (m *Mirror) applySyncEnd(v *vhostMirror, op *Op, done func(error)) {
	m.completeNow(v, done, nil)
}
