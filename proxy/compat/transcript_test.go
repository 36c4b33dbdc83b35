package compat

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// A transcript is the ordered, observable outcome of one scenario run: one
// canonical JSON object per line (keys sorted, no HTML escaping), with the
// run's own names normalised away.
type transcript []string

var (
	// Queues the broker names: amq.gen- and 22 base64url characters.
	serverNamedQueue = regexp.MustCompile(`amq\.gen-[A-Za-z0-9_-]{6,}`)
	// Consumer tags the broker makes up for an empty basic.consume tag.
	serverConsumerTag = regexp.MustCompile(`amq\.ctag-[A-Za-z0-9_-]{6,}`)
)

// prefixPlaceholder stands for a run's unique name prefix.
const prefixPlaceholder = "P"

// parseTranscript reads JSON lines (as the client scripts print them),
// makes each canonical and normalises it. Lines that are not JSON objects
// with a "step" are an error: a client must not print anything else on
// stdout.
func parseTranscript(out []byte, prefix string) (transcript, error) {
	var tr transcript
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	n := 0
	for sc.Scan() {
		n++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		c, err := canonicalLine(line)
		if err != nil {
			return tr, fmt.Errorf("transcript line %d %q: %w", n, truncate(string(line), 200), err)
		}
		tr = append(tr, normalise(c, prefix))
	}
	return tr, sc.Err()
}

// canonicalLine re-encodes one JSON object with sorted keys and numbers as
// they were written.
func canonicalLine(line []byte) (string, error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	var v map[string]any
	if err := dec.Decode(&v); err != nil {
		return "", fmt.Errorf("not a JSON object: %w", err)
	}
	if dec.More() {
		return "", fmt.Errorf("more than one JSON value on the line")
	}
	if s, ok := v["step"].(string); !ok || s == "" {
		return "", fmt.Errorf(`no "step" string`)
	}
	return encodeCanonical(v)
}

func encodeCanonical(v any) (string, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	return strings.TrimSuffix(b.String(), "\n"), nil
}

// normalise replaces what differs between two correct runs: the run's name
// prefix, server-named queues and server-made consumer tags.
func normalise(line, prefix string) string {
	if prefix != "" {
		line = strings.ReplaceAll(line, prefix, prefixPlaceholder)
	}
	line = serverNamedQueue.ReplaceAllString(line, "amq.gen-*")
	return serverConsumerTag.ReplaceAllString(line, "amq.ctag-*")
}

// steps lists the step names in order, for messages.
func (tr transcript) steps() []string {
	out := make([]string, 0, len(tr))
	for _, l := range tr {
		var v struct{ Step string }
		_ = json.Unmarshal([]byte(l), &v)
		out = append(out, v.Step)
	}
	return out
}

// has reports whether a step of that name is in the transcript.
func (tr transcript) has(step string) bool {
	for _, s := range tr.steps() {
		if s == step {
			return true
		}
	}
	return false
}

// requireSteps fails the test for each step name missing from tr: a
// transcript that stopped early, or a scenario that lost a step, must not
// pass just because both legs lost it.
func requireSteps(t testing.TB, leg string, tr transcript, steps ...string) {
	t.Helper()
	var missing []string
	for _, s := range steps {
		if !tr.has(s) {
			missing = append(missing, s)
		}
	}
	if len(missing) > 0 {
		t.Errorf("%s transcript lacks steps %q (it has %d lines)", leg, missing, len(tr))
	}
}

// forbidSteps fails the test for each line of tr whose step is one of
// steps (the clients' "check-failed" and "error" lines).
func forbidSteps(t testing.TB, leg string, tr transcript, steps ...string) {
	t.Helper()
	for i, s := range tr.steps() {
		for _, bad := range steps {
			if s == bad {
				t.Errorf("%s transcript line %d: %s", leg, i+1, tr[i])
			}
		}
	}
}

// compareTranscripts fails the test when want and got differ, showing a
// line diff (- only in want, + only in got).
func compareTranscripts(t testing.TB, client, wantLeg string, want transcript, gotLeg string, got transcript) {
	t.Helper()
	if equalTranscripts(want, got) {
		return
	}
	t.Errorf("%s: the %s transcript (%d lines) differs from the %s one (%d lines); - only %s, + only %s:\n%s",
		client, gotLeg, len(got), wantLeg, len(want), wantLeg, gotLeg, diffLines(want, got))
}

func equalTranscripts(a, b transcript) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// diffLines is a longest-common-subsequence line diff; transcripts are a
// few hundred lines at most.
func diffLines(a, b []string) string {
	n, m := len(a), len(b)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out strings.Builder
	line := func(mark byte, s string) {
		out.WriteByte(mark)
		out.WriteByte(' ')
		out.WriteString(truncate(s, 600))
		out.WriteByte('\n')
	}
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			line(' ', a[i])
			i++
			j++
		case j < m && (i == n || lcs[i][j+1] >= lcs[i+1][j]):
			line('+', b[j])
			j++
		default:
			line('-', a[i])
			i++
		}
	}
	return out.String()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + fmt.Sprintf("… (%d bytes)", len(s))
}

func TestNormalise(t *testing.T) {
	out := []byte(`{"step":"declare","queue":"compat.go.direct.1a2b.q","z":1}
{"text":"NOT_FOUND - no queue 'compat.go.direct.1a2b.missing'","step":"error"}

{"step":"named","queue":"amq.gen-_iUUjjuej7GLlMDocpImEg","tag":"amq.ctag-Ab_c-D1234567890xyzABCD","t":"<time>","n":1.50}
`)
	tr, err := parseTranscript(out, "compat.go.direct.1a2b")
	if err != nil {
		t.Fatal(err)
	}
	want := transcript{
		`{"queue":"P.q","step":"declare","z":1}`,
		`{"step":"error","text":"NOT_FOUND - no queue 'P.missing'"}`,
		`{"n":1.50,"queue":"amq.gen-*","step":"named","t":"<time>","tag":"amq.ctag-*"}`,
	}
	if !equalTranscripts(tr, want) {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(tr, "\n"), strings.Join(want, "\n"))
	}
	for _, bad := range []string{`[1]`, `{"no":"step"}`, `{"step":"a"} {"step":"b"}`, `not json`} {
		if _, err := parseTranscript([]byte(bad), ""); err == nil {
			t.Errorf("parseTranscript(%q) accepted it", bad)
		}
	}
}

func TestDiffLines(t *testing.T) {
	got := diffLines([]string{"a", "b", "c", "d"}, []string{"a", "c", "x", "d", "e"})
	want := "  a\n- b\n  c\n+ x\n  d\n+ e\n"
	if got != want {
		t.Fatalf("diff:\n%s\nwant:\n%s", got, want)
	}
	if d := diffLines(nil, nil); d != "" {
		t.Fatalf("empty diff = %q", d)
	}
}
