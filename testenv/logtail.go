package testenv

import (
	"io"
	"os"
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
