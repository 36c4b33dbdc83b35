package bench

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/testenv"
)

// TestMirroredTarget runs the mirrored target (3 brokers, 3 in-process
// sidecars) beside direct with a tiny N: every check of a run (order, no
// loss, queue counts at the master) must hold through the group.
func TestMirroredTarget(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 4 RabbitMQ brokers")
	}
	g := testenv.Start(t, testenv.Options{Nodes: 1})
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	cfg := tinyConfig(g.Nodes[0].URL, TargetSpec{Name: TargetDirect}, TargetSpec{Name: TargetMirrored})
	cfg.Warmup = 0
	cfg.Logger = zerolog.New(zerolog.NewTestWriter(t))
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, rep, cfg)
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", text.String())
	if !strings.Contains(text.String(), "mirrored/direct") {
		t.Errorf("text report lacks the mirrored/direct ratio")
	}
}
