package amqp

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp/internal/gen"
)

// TestGeneratedCodeIsCurrent runs the generator into a temporary directory
// and compares what it wrote with the checked-in files. Run
// `go generate ./proxy/amqp` when it fails.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	files, err := gen.Generate(gen.Spec)
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	for name, code := range files {
		if err := os.WriteFile(filepath.Join(tmp, name), code, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	written, err := filepath.Glob(filepath.Join(tmp, "methods*_gen.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range written {
		want, _ := os.ReadFile(f)
		got, err := os.ReadFile(filepath.Base(f))
		if err != nil {
			t.Errorf("%s: %v (run go generate ./proxy/amqp)", filepath.Base(f), err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is not what internal/gen writes from spec.txt: run go generate ./proxy/amqp", filepath.Base(f))
		}
	}
	onDisk, err := filepath.Glob("methods*_gen.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range onDisk {
		if _, ok := files[f]; !ok {
			t.Errorf("%s is no longer generated: run go generate ./proxy/amqp to remove it", f)
		}
	}
	if len(onDisk) != len(files) {
		t.Errorf("%d generated files on disk, generator writes %d", len(onDisk), len(files))
	}
}

func TestSpecParseErrors(t *testing.T) {
	for _, src := range []string{
		"",
		"10 start sync\n",
		"class c 10\n10 a - x:nosuchtype\n",
		"class c 10\n10 a - x:bit x:bit\n",
		"class c 10\n10 a -\n10 b -\n",
		"class c 10\nclass d 10\n",
		"class c 10\n10 a weird\n",
		"class c 10\n10 a - nocolon\n",
	} {
		if _, err := gen.Parse([]byte(src)); err == nil {
			t.Errorf("Parse(%q) succeeded, want an error", src)
		}
	}
}
