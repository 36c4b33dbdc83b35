//go:build linux

package testenv

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkStartGroup measures how long a group takes to become ready,
// and to close, for 1 and 3 nodes and a few Erlang VM flag sets:
//
//	go test -run '^$' -bench StartGroup -benchtime 3x ./testenv/
func BenchmarkStartGroup(b *testing.B) {
	for _, nodes := range []int{1, 3} {
		for _, erl := range []struct{ name, args string }{
			{"default", ""}, // DefaultErlArgs
			{"rabbitmq-defaults", "-"},
			{"one-scheduler", "+S 1:1"},
		} {
			b.Run(fmt.Sprintf("nodes=%d/erl=%s", nodes, erl.name), func(b *testing.B) {
				for b.Loop() {
					g, err := StartGroup(context.Background(), Options{Backend: BackendLocal, Nodes: nodes, ErlArgs: erl.args})
					if err != nil {
						b.Fatal(err)
					}
					if err := g.Close(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
