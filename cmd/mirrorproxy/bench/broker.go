package bench

import (
	"context"
	"errors"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/testenv"
)

// StartBroker starts a single local broker with testenv for a run given no
// broker URL, and returns its AMQP URL and a function that stops it and
// removes its files.
func StartBroker(ctx context.Context, log zerolog.Logger) (url string, stop func() error, err error) {
	g, err := testenv.StartGroup(ctx, testenv.Options{
		Nodes:  1,
		Logger: func(format string, args ...any) { log.Info().Msgf(format, args...) },
	})
	if err != nil {
		return "", nil, err
	}
	if len(g.Nodes) != 1 {
		return "", nil, errors.Join(fmt.Errorf("testenv started %d brokers, expected 1", len(g.Nodes)), g.Close())
	}
	log.Info().Str("url", g.Nodes[0].URL).Str("node", g.Nodes[0].Name).Msg("broker started for this run")
	return g.Nodes[0].URL, g.Close, nil
}
