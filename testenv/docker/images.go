package docker

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/mirrorproxy/mirrorproxy/testenv/internal/backend"
)

// Images without a registry. This machine reaches Debian's packages and
// the Go module proxy but no image registry, so both images are made
// here and taken in with `docker import`:
//
//   - the broker image: a Debian root filesystem with rabbitmq-server made
//     by mmdebstrap from the machine's own apt sources;
//   - the sidecar image: the static mirrorproxy binary alone.
//
// Each image is tagged with a hash of its inputs (the recipe below, the
// apt sources, the binary) and carries it in the label labelInputs; when an
// image with that tag exists the build is skipped. A file lock serialises
// builds of concurrent test processes.

// Image repositories of the images testenv builds. The tag is the first 12
// hex digits of the inputs' hash; ":latest" follows the newest build.
const (
	BrokerImageRepo  = "mirrorproxy-testenv/rabbitmq"
	SidecarImageRepo = "mirrorproxy-testenv/mirrorproxy"
)

const (
	// labelInputs holds the full hash of an image's inputs.
	labelInputs = "io.mirrorproxy.testenv.inputs"
	// labelImage names the kind of image ("broker", "sidecar"); list or
	// prune them with `docker images --filter label=io.mirrorproxy.testenv.image`.
	labelImage = "io.mirrorproxy.testenv.image"
	// aptSourcesFile is where the machine's Debian mirror is read from.
	aptSourcesFile = "/etc/apt/sources.list.d/debian.sources"
	// imageLockName is the lock file in os.TempDir().
	imageLockName = "mpt-testenv-images.lock"
)

// brokerRecipe is every input of the broker image besides the apt sources.
// Changing any line changes the hash and so rebuilds the image.
var brokerRecipe = struct {
	Variant  string
	Packages []string
	DpkgOpts []string
	Changes  []string
}{
	Variant:  "essential",
	Packages: []string{"rabbitmq-server"},
	DpkgOpts: []string{
		"path-exclude=/usr/share/doc/*",
		"path-exclude=/usr/share/man/*",
		"path-exclude=/usr/share/locale/*",
	},
	Changes: []string{
		"ENV LANG=C.UTF-8",
		"ENV PATH=/usr/lib/rabbitmq/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"ENV HOME=/var/lib/rabbitmq",
		"WORKDIR /var/lib/rabbitmq",
		"USER rabbitmq",
		"EXPOSE 5672 15672",
		`CMD ["rabbitmq-server"]`,
	},
}

// sidecarChanges are the image settings of the sidecar image.
var sidecarChanges = []string{
	"USER 65534:65534",
	`ENTRYPOINT ["/mirrorproxy"]`,
	`CMD ["run", "--listen", "0.0.0.0:5673", "--upstream", "127.0.0.1:5672"]`,
	"EXPOSE 5673",
}

// ImageBuild reports what Ensure*Image did.
type ImageBuild struct {
	// Image is the reference to use, "repo:tag".
	Image string
	// Inputs is the hash of the image's inputs (its label).
	Inputs string
	// Built is true when the image was built now, false when it existed.
	Built bool
	// Took is how long the build (or the check) took.
	Took time.Duration
}

// ErrNoMmdebstrap is returned when the broker image must be built and
// mmdebstrap is missing.
var ErrNoMmdebstrap = errors.New("mmdebstrap not found; the broker image is built with it: `apt-get update && apt-get install -y mmdebstrap`, or run `make images`")

// EnsureBrokerImage builds the broker image unless an image with the same
// inputs exists, and returns its reference. It runs mmdebstrap (as root,
// or in its unshare mode) against the machine's Debian sources; the first
// build takes a minute or two, later calls a few milliseconds. logf gets
// progress lines (nil: none).
func EnsureBrokerImage(ctx context.Context, logf func(string, ...any)) (ImageBuild, error) {
	logf = orDiscard(logf)
	began := time.Now()
	sources, err := os.ReadFile(aptSourcesFile)
	if err != nil {
		return ImageBuild{}, fmt.Errorf("testenv: broker image: read the Debian mirror from %s: %w", aptSourcesFile, err)
	}
	suite := firstSuite(sources)
	if suite == "" {
		return ImageBuild{}, fmt.Errorf("testenv: broker image: no Suites: line in %s", aptSourcesFile)
	}
	recipe, _ := json.Marshal(brokerRecipe)
	inputs := hashOf("broker/v1", string(recipe), suite, string(sources))
	ref := BrokerImageRepo + ":" + inputs[:12]

	cli, err := newDockerClient(ctx)
	if err != nil {
		return ImageBuild{}, err
	}
	defer cli.Close()
	return ensureImage(ctx, cli, ref, inputs, began, logf, func() error {
		mm, err := exec.LookPath("mmdebstrap")
		if err != nil {
			return ErrNoMmdebstrap
		}
		args := []string{"--variant=" + brokerRecipe.Variant, "--include=" + strings.Join(brokerRecipe.Packages, ",")}
		for _, o := range brokerRecipe.DpkgOpts {
			args = append(args, "--dpkgopt="+o)
		}
		// The sources file is passed as the mirror: mmdebstrap pastes it
		// into the image's apt sources, so no host name is written here.
		args = append(args, suite, "-", aptSourcesFile)
		logf("testenv: building %s with mmdebstrap %s (a minute or two)", ref, strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, mm, args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("run mmdebstrap: %w", err)
		}
		ierr := importImage(ctx, cli, out, ref, "broker", inputs, brokerRecipe.Changes)
		if ierr != nil {
			_ = cmd.Process.Kill()
		}
		werr := cmd.Wait()
		if werr != nil {
			return fmt.Errorf("mmdebstrap: %w\n%s", werr, backend.LastLines(stderr.String(), 30))
		}
		return ierr
	})
}

// sidecarImages memoises EnsureSidecarImage per binary path ("" = built
// from source) for the life of the process: the source does not change
// under a running test binary.
var sidecarImages struct {
	mu   sync.Mutex
	done map[string]ImageBuild
}

// EnsureSidecarImage builds the sidecar image from a static mirrorproxy
// binary unless an image of the same binary exists. An empty binary means
// building cmd/mirrorproxy with the go command (CGO_ENABLED=0, -trimpath,
// so the same source gives the same binary and hits the cache).
func EnsureSidecarImage(ctx context.Context, binary string, logf func(string, ...any)) (ImageBuild, error) {
	logf = orDiscard(logf)
	sidecarImages.mu.Lock()
	defer sidecarImages.mu.Unlock()
	if b, ok := sidecarImages.done[binary]; ok {
		b.Built, b.Took = false, 0
		return b, nil
	}
	began := time.Now()
	path := binary
	if path == "" {
		dir, err := os.MkdirTemp("", "mpt-sidecar-bin-")
		if err != nil {
			return ImageBuild{}, fmt.Errorf("testenv: sidecar image: %w", err)
		}
		defer os.RemoveAll(dir)
		path = filepath.Join(dir, "mirrorproxy")
		if err := backend.BuildSidecar(ctx, path); err != nil {
			return ImageBuild{}, err
		}
	}
	bin, err := os.ReadFile(path)
	if err != nil {
		return ImageBuild{}, fmt.Errorf("testenv: sidecar image: read the mirrorproxy binary: %w", err)
	}
	if !bytes.HasPrefix(bin, []byte("\x7fELF")) {
		return ImageBuild{}, fmt.Errorf("testenv: sidecar image: %s is not a Linux (ELF) binary", path)
	}
	inputs := hashOf("sidecar/v1", strings.Join(sidecarChanges, "\n"), string(bin))
	ref := SidecarImageRepo + ":" + inputs[:12]
	cli, err := newDockerClient(ctx)
	if err != nil {
		return ImageBuild{}, err
	}
	defer cli.Close()
	b, err := ensureImage(ctx, cli, ref, inputs, began, logf, func() error {
		var tarball bytes.Buffer
		tw := tar.NewWriter(&tarball)
		now := time.Unix(0, 0)
		hdrs := []struct {
			h    tar.Header
			body []byte
		}{
			{tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777, ModTime: now}, nil},
			{tar.Header{Name: "mirrorproxy", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bin)), ModTime: now}, bin},
		}
		for _, e := range hdrs {
			if err := tw.WriteHeader(&e.h); err != nil {
				return err
			}
			if _, err := tw.Write(e.body); err != nil {
				return err
			}
		}
		if err := tw.Close(); err != nil {
			return err
		}
		logf("testenv: building %s from a %d MB binary", ref, len(bin)>>20)
		return importImage(ctx, cli, &tarball, ref, "sidecar", inputs, sidecarChanges)
	})
	if err != nil {
		return b, err
	}
	if b.Built {
		pruneSidecarImages(ctx, cli, b.Image, logf)
	}
	if sidecarImages.done == nil {
		sidecarImages.done = map[string]ImageBuild{}
	}
	sidecarImages.done[binary] = b
	return b, nil
}

// sidecarImageKeep is how long an older sidecar image is kept after a
// newer one was built: test processes of the last hour may still use it.
const sidecarImageKeep = time.Hour

// pruneSidecarImages removes sidecar images older than sidecarImageKeep
// other than current: every change of the code makes a new one. An image
// a container still uses is left (the engine refuses without force).
func pruneSidecarImages(ctx context.Context, cli *client.Client, current string, logf func(string, ...any)) {
	imgs, err := cli.ImageList(ctx, client.ImageListOptions{Filters: make(client.Filters).Add("label", labelImage+"=sidecar")})
	if err != nil {
		logf("testenv: list old sidecar images: %v", err)
		return
	}
	for _, img := range imgs.Items {
		if slices.Contains(img.RepoTags, current) || time.Since(time.Unix(img.Created, 0)) < sidecarImageKeep {
			continue
		}
		for _, tag := range img.RepoTags {
			if _, err := cli.ImageRemove(ctx, tag, client.ImageRemoveOptions{PruneChildren: true}); err == nil {
				logf("testenv: removed old sidecar image %s", tag)
			}
		}
	}
}

// ensureImage returns ref when it exists with the inputs label, else runs
// build under the machine-wide image lock (checking again first: another
// process may have built it meanwhile) and tags the result ":latest" too.
func ensureImage(ctx context.Context, cli *client.Client, ref, inputs string, began time.Time,
	logf func(string, ...any), build func() error) (ImageBuild, error) {
	res := ImageBuild{Image: ref, Inputs: inputs}
	if ok, err := imageHasInputs(ctx, cli, ref, inputs); err != nil || ok {
		res.Took = time.Since(began)
		return res, err
	}
	unlock, err := lockImages(ctx)
	if err != nil {
		return res, err
	}
	defer unlock()
	if ok, err := imageHasInputs(ctx, cli, ref, inputs); err != nil || ok {
		res.Took = time.Since(began)
		return res, err
	}
	if err := build(); err != nil {
		return res, fmt.Errorf("testenv: build image %s: %w", ref, err)
	}
	if ok, err := imageHasInputs(ctx, cli, ref, inputs); err != nil || !ok {
		return res, fmt.Errorf("testenv: image %s missing or without its inputs label after the build (%w)", ref, err)
	}
	repo, _, _ := strings.Cut(ref, ":")
	if _, err := cli.ImageTag(ctx, client.ImageTagOptions{Source: ref, Target: repo + ":latest"}); err != nil {
		return res, fmt.Errorf("testenv: tag %s: %w", ref, err)
	}
	res.Built, res.Took = true, time.Since(began)
	logf("testenv: built %s in %.1fs", ref, res.Took.Seconds())
	return res, nil
}

func imageHasInputs(ctx context.Context, cli *client.Client, ref, inputs string) (bool, error) {
	img, err := cli.ImageInspect(ctx, ref)
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("testenv: inspect image %s: %w", ref, err)
	}
	return img.Config != nil && img.Config.Labels[labelInputs] == inputs, nil
}

// importImage sends a root filesystem tarball to `docker import` with the
// given changes plus the labels, and reads the daemon's answer to the end.
func importImage(ctx context.Context, cli *client.Client, rootfs io.Reader, ref, kind, inputs string, changes []string) error {
	changes = append(append([]string{}, changes...),
		fmt.Sprintf("LABEL %s=%s %s=%s", labelInputs, inputs, labelImage, kind))
	rc, err := cli.ImageImport(ctx, client.ImageImportSource{Source: rootfs, SourceName: "-"}, ref,
		client.ImageImportOptions{Changes: changes, Message: "mirrorproxy testenv " + kind + " image"})
	if err != nil {
		return fmt.Errorf("docker import: %w", err)
	}
	defer rc.Close()
	// The answer is a stream of JSON messages; an error arrives as one.
	dec := json.NewDecoder(rc)
	for {
		var msg struct {
			Error string `json:"error"`
		}
		if err := dec.Decode(&msg); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("docker import: read answer: %w", err)
		}
		if msg.Error != "" {
			return fmt.Errorf("docker import: %s", msg.Error)
		}
	}
}

// lockImages takes the machine-wide image build lock, polling so that ctx
// can end the wait.
func lockImages(ctx context.Context) (func(), error) {
	p := filepath.Join(os.TempDir(), imageLockName)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, fmt.Errorf("testenv: image lock: %w", err)
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("testenv: image lock %s: %w", p, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("testenv: waiting for another process's image build (lock %s): %w", p, ctx.Err())
		case <-tick.C:
		}
	}
}

// firstSuite returns the first suite named in a deb822 sources file (or a
// one-line "deb URI SUITE ..." file).
func firstSuite(sources []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(sources))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if v, ok := strings.CutPrefix(line, "Suites:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				return f[0]
			}
		}
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "deb" {
			i := 2
			if strings.HasPrefix(f[1], "[") { // deb [options] URI SUITE
				for i = 1; i < len(f) && !strings.HasSuffix(f[i], "]"); i++ {
				}
				i += 2
			}
			if i < len(f) {
				return f[i]
			}
		}
	}
	return ""
}

func hashOf(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:", len(p))
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil))
}

func orDiscard(logf func(string, ...any)) func(string, ...any) {
	if logf == nil {
		return func(string, ...any) {}
	}
	return logf
}
