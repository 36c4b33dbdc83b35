package config

import (
	"fmt"
	"sort"
	"strings"
)

// Error is one problem with one key.
type Error struct {
	// File and Line locate the value in a config file (Line is 1-based);
	// Flag names the command-line flag that set it instead. Both empty: the
	// value is a default or the problem concerns the file as a whole.
	File string
	Line int
	Flag string
	// Key is the dotted key path, e.g. "limits.heartbeat"; "" for the file.
	Key string
	// Msg says what is wrong, quoting the value.
	Msg string
}

func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.Flag != "":
		fmt.Fprintf(&b, "flag %s: ", e.Flag)
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		fmt.Fprintf(&b, "%s: ", e.File)
	}
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found, in file order. Its Error is one line per
// problem.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// sorted orders es by file line, keeping the order of equal lines (flags
// and defaults, line 0, first).
func (es Errors) sorted() Errors {
	sort.SliceStable(es, func(i, j int) bool { return es[i].Line < es[j].Line })
	return es
}

// orNil returns nil for no errors, so callers can write `if err != nil`.
func (es Errors) orNil() error {
	if len(es) == 0 {
		return nil
	}
	return es.sorted()
}
