//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// craneVersion is the crane the image benchmark compares with: the
// go-containerregistry of go.mod.
const craneVersion = "v0.22.1"

// TestBenchmarkImage measures a create from a container image served by a
// registry on loopback (in this process: go-containerregistry's
// pkg/registry) against crane export of the same image piped into tar -x,
// and a second create from the image (its base cached) against the first.
// The image is the suite's Debian base as one layer. Each round starts
// from an empty cache of the benchmark's own, and the two sides take
// turns to lead, after a sync. It runs only with NSBOX_BENCH=1 (just
// bench); crane is NSBOX_CRANE, or crane on PATH, or built with go
// install (the Justfile builds it).
func TestBenchmarkImage(t *testing.T) {
	runs, e := benchSetup(t)
	crane := craneBinary(t)
	work := "/var/tmp/bench-image"
	e.mustSh(t, "rm -rf "+work+" && mkdir -p "+work)
	defer e.sh(t, "rm -rf "+work)
	ie := *e
	ie.cacheDir = work + "/cache"

	e.mustNsb(t, "create", "bench-img-src", "--release", "bookworm", "--storage", "copy")
	e.mustNsb(t, "export", "bench-img-src", work+"/root.tar.gz")
	e.mustNsb(t, "remove", "bench-img-src")
	base, err := tarball.LayerFromFile(work + "/root.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	reg := newCountingRegistry(t)
	defer reg.Close()
	ref := reg.push(t, "bench:1", imageOf(t, base))
	craneRef := ref[len("docker://"):]

	var first, second, cr []time.Duration
	for i := 0; i < runs; i++ {
		sides := []func(){
			func() {
				e.mustSh(t, "rm -rf "+ie.cacheDir+" && sync")
				first = append(first, timed(t, ie.argv("-q", "create", "bench-i1", "--from", ref)...))
				e.mustSh(t, "sync")
				second = append(second, timed(t, ie.argv("-q", "create", "bench-i2", "--from", ref)...))
				ie.mustNsb(t, "remove", "bench-i1", "bench-i2")
			},
			func() {
				dir := work + "/crane"
				e.mustSh(t, "rm -rf "+dir+" && mkdir "+dir+" && sync")
				cr = append(cr, timed(t, "bash", "-o", "pipefail", "-c", crane+" export "+craneRef+" - | tar -x -C "+dir))
				e.mustSh(t, "rm -rf "+dir)
			},
		}
		for k := range sides {
			sides[(i+k)%len(sides)]()
		}
	}
	rows := [][3]string{
		ratioRow("pull and create from a registry on loopback (cold cache) vs crane export piped to tar -x", median(first), median(cr), "%.2f", " (target <= 1.2)"),
		ratioRow("second create from the same image (cached base) vs the first", median(second), median(first), "%.3f", " (target <= 0.1)"),
	}
	printRows(t, e, fmt.Sprintf("medians of %d runs, image of %s", runs, humanSize(t, work+"/root.tar.gz")), rows)
}

// craneBinary finds crane: NSBOX_CRANE, PATH, or one built with go
// install into the test's temporary directory.
func craneBinary(t *testing.T) string {
	if p := os.Getenv("NSBOX_CRANE"); p != "" {
		return p
	}
	if p, err := exec.LookPath("crane"); err == nil {
		return p
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "install", "github.com/google/go-containerregistry/cmd/crane@"+craneVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build crane: %v\n%s", err, out)
	}
	return filepath.Join(dir, "crane")
}

func humanSize(t *testing.T, path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%.0f MB compressed", float64(fi.Size())/1e6)
}
