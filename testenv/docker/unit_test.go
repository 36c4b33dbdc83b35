package docker

import (
	"errors"
	"strings"
	"testing"
)

func TestFirstSuite(t *testing.T) {
	cases := map[string]string{
		"Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n": "bookworm",
		"# comment\ndeb http://mirror.invalid/debian trixie main\n":                                             "trixie",
		"deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian sid main\n":                             "sid",
		"Types: deb\n": "",
	}
	for in, want := range cases {
		if got := firstSuite([]byte(in)); got != want {
			t.Errorf("firstSuite(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHashOfSeparatesParts(t *testing.T) {
	if hashOf("ab", "c") == hashOf("a", "bc") {
		t.Fatal("hashOf does not separate its parts")
	}
	if a, b := hashOf("x"), hashOf("x"); a != b || len(a) != 64 {
		t.Fatal("hashOf is not a stable sha256 hex")
	}
}

func TestLimitWriter(t *testing.T) {
	var b strings.Builder
	w := &limitWriter{w: &b, n: 5}
	if n, err := w.Write([]byte("abc")); n != 3 || err != nil {
		t.Fatalf("first write: %d, %v", n, err)
	}
	if n, err := w.Write([]byte("defg")); n != 2 || !errors.Is(err, errLimit) {
		t.Fatalf("second write: %d, %v", n, err)
	}
	if b.String() != "abcde" {
		t.Fatalf("kept %q", b.String())
	}
}
