package testenv

import (
	"fmt"
	"io"
	"os"
	"strings"
)

// tailBytes bounds how much of a log file is read for its tail.
const tailBytes = 64 << 10

// tailFile returns the last lines lines of file p (at most tailBytes).
func tailFile(p string, lines int) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	off := max(st.Size()-tailBytes, 0)
	b, err := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if err != nil {
		return "", err
	}
	return lastLines(string(b), lines), nil
}

// lastLines returns the last n lines of s (a trailing newline does not
// count as an empty line).
func lastLines(s string, n int) string {
	trimmed := strings.TrimRight(s, "\n")
	idx := len(trimmed)
	for i := 0; i < n; i++ {
		j := strings.LastIndexByte(trimmed[:idx], '\n')
		if j < 0 {
			return s
		}
		idx = j
	}
	return s[idx+1:]
}

// readFrom returns file p from offset off on (at most 4*tailBytes: the
// excess is cut from the middle).
func readFrom(p string, off int64) (string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	if off > int64(len(b)) {
		off = 0
	}
	b = b[off:]
	if len(b) > 4*tailBytes {
		b = append(append(b[:2*tailBytes:2*tailBytes], "\n[...]\n"...), b[len(b)-2*tailBytes:]...)
	}
	return string(b), nil
}

// headTail returns s whole if it has at most head+tail lines, else its
// first head lines, a line saying how many were left out, and its last
// tail lines.
func headTail(s string, head, tail int) string {
	lines := strings.SplitAfter(s, "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	if len(lines) <= head+tail {
		return s
	}
	return strings.Join(lines[:head], "") +
		fmt.Sprintf("[... %d lines left out ...]\n", len(lines)-head-tail) +
		strings.Join(lines[len(lines)-tail:], "")
}
