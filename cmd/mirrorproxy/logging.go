package main

import (
	"fmt"
	"io"
	"os"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/config"
)

// newLogger builds the process's logger from the log section: JSON lines on
// w, or console lines when the format is console, or auto and w is a
// terminal (terminal tells). The config was validated, so level and format
// are known words.
func newLogger(cfg config.Log, w io.Writer, terminal bool) (zerolog.Logger, error) {
	level, err := zerolog.ParseLevel(cfg.Level)
	if err != nil {
		return zerolog.Logger{}, fmt.Errorf("log.level %q: %w", cfg.Level, err)
	}
	console := cfg.Format == "console" || (cfg.Format == "auto" && terminal)
	if console {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000", NoColor: !terminal}
	}
	return zerolog.New(w).Level(level).With().Timestamp().Logger(), nil
}

// isTerminal reports whether w is a terminal (for log.format auto).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
}
