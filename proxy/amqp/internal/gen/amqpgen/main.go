package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp/internal/gen"
)

func main() {
	dir := flag.String("dir", ".", "directory to write the files into")
	spec := flag.String("spec", "", "spec file to read instead of the embedded spec.txt")
	flag.Parse()
	if err := run(*dir, *spec); err != nil {
		fmt.Fprintln(os.Stderr, "amqpgen:", err)
		os.Exit(1)
	}
}

func run(dir, spec string) error {
	src := gen.Spec
	if spec != "" {
		b, err := os.ReadFile(spec)
		if err != nil {
			return err
		}
		src = b
	}
	files, err := gen.Generate(src)
	if err != nil {
		return err
	}
	// Remove generated files of classes no longer in the spec.
	old, err := filepath.Glob(filepath.Join(dir, "methods*_gen.go"))
	if err != nil {
		return err
	}
	for _, f := range old {
		if _, ok := files[filepath.Base(f)]; !ok {
			if err := os.Remove(f); err != nil {
				return err
			}
		}
	}
	for name, code := range files {
		if err := os.WriteFile(filepath.Join(dir, name), code, 0o644); err != nil {
			return err
		}
	}
	return nil
}
