package backend

import (
	"fmt"
	"strings"
)

// HeadTail returns s whole if it has at most head+tail lines, else its
// first head lines, a line saying how many were left out, and its last
// tail lines.
func HeadTail(s string, head, tail int) string {
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

// LastLines returns the last n lines of s (a trailing newline does not
// count as an empty line).
func LastLines(s string, n int) string {
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
