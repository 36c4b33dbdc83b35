package replicate

import "testing"

func TestStoredKeysRemembersTheNewest(t *testing.T) {
	s := NewStoredKeys(3)
	for _, k := range []uint64{10, 20, 30} {
		s.Add(k)
	}
	s.Add(20) // already there: does not count again
	for _, k := range []uint64{10, 20, 30} {
		if !s.Has(k) {
			t.Fatalf("%d forgotten within the bound", k)
		}
	}
	if s.Len() != 3 {
		t.Fatalf("Len %d, want 3", s.Len())
	}
	s.Add(40) // past the bound: the oldest goes
	if s.Has(10) || !s.Has(20) || !s.Has(40) {
		t.Fatalf("after a fourth key: 10 %v, 20 %v, 40 %v", s.Has(10), s.Has(20), s.Has(40))
	}
	s.Add(0)
	if s.Has(0) {
		t.Fatal("key 0 (no key) is remembered")
	}
	var none *StoredKeys
	none.Add(1)
	if none.Has(1) {
		t.Fatal("a nil set remembers")
	}
}
