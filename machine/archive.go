package machine

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"strings"

	"github.com/nsbox/nsbox/bootstrap"
)

// ErrUnsafeArchive is returned for an archive that would write outside the
// directory it is extracted into.
var ErrUnsafeArchive = errors.New("unsafe archive")

// ArchiveChecker checks tar members one by one, in archive order.
type ArchiveChecker struct {
	links map[string]bool // paths the archive made symbolic links
}

// Check refuses a member that would land outside the root it is extracted
// into: an absolute path, a ".." component, a path that goes through a
// symbolic link the archive made earlier, or a hard link pointing out.
func (c *ArchiveChecker) Check(h *tar.Header) error {
	if c.links == nil {
		c.links = map[string]bool{}
	}
	name, err := memberPath(h.Name)
	if err != nil {
		return err
	}
	if name == "." {
		return nil
	}
	if err := c.throughLink(h.Name, name); err != nil {
		return err
	}
	if c.links[name] {
		return fmt.Errorf("%w: %q replaces a symbolic link the archive made", ErrUnsafeArchive, h.Name)
	}
	switch h.Typeflag {
	case tar.TypeSymlink:
		c.links[name] = true
	case tar.TypeLink:
		target, err := memberPath(h.Linkname)
		if err != nil {
			return fmt.Errorf("hard link %q: %w", h.Name, err)
		}
		if err := c.throughLink(h.Linkname, target); err != nil {
			return err
		}
		if c.links[target] {
			return fmt.Errorf("%w: hard link %q to a symbolic link", ErrUnsafeArchive, h.Name)
		}
	}
	return nil
}

// memberPath cleans a member name, refusing absolute paths and "..".
func memberPath(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: absolute path %q", ErrUnsafeArchive, name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: %q leaves the root with ..", ErrUnsafeArchive, name)
		}
	}
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: NUL in %q", ErrUnsafeArchive, name)
	}
	return path.Clean(name), nil
}

// throughLink refuses a path whose parent directories include a link.
func (c *ArchiveChecker) throughLink(orig, name string) error {
	for dir := path.Dir(name); dir != "." && dir != "/"; dir = path.Dir(dir) {
		if c.links[dir] {
			return fmt.Errorf("%w: %q would be written through the symbolic link %q", ErrUnsafeArchive, orig, dir)
		}
	}
	return nil
}

// CheckArchive reads a (possibly compressed) tarball and checks every
// member. gzip is read in-process; zstd and xz through their programs.
func CheckArchive(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	magic, _ := br.Peek(6)
	var r io.Reader = br
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		gz, err := gzip.NewReader(br)
		if err != nil {
			return err
		}
		defer gz.Close()
		r = gz
	case len(magic) >= 4 && string(magic[:4]) == "\x28\xb5\x2f\xfd":
		return checkThrough("zstd", file)
	case len(magic) >= 6 && string(magic) == "\xfd7zXZ\x00":
		return checkThrough("xz", file)
	}
	return checkTar(r)
}

// checkThrough decompresses file with prog -dc and checks the stream.
func checkThrough(prog, file string) error {
	if _, err := exec.LookPath(prog); err != nil {
		pkg := map[string]string{"xz": "xz-utils"}[prog]
		if pkg == "" {
			pkg = prog
		}
		return fmt.Errorf("%s is not installed (install it: apt-get install %s)", prog, pkg)
	}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := bootstrap.ExecRunner{}.Run(context.Background(), &bootstrap.Cmd{Path: prog, Args: []string{"-dc", file}, Stdout: pw})
		pw.CloseWithError(err)
		done <- err
	}()
	err := checkTar(pr)
	if err == nil {
		// Read the padding after the last member, or prog dies of SIGPIPE.
		_, _ = io.Copy(io.Discard, pr)
	}
	pr.Close()
	if derr := <-done; err == nil && derr != nil && !errors.Is(derr, io.ErrClosedPipe) {
		return fmt.Errorf("%s: %w", prog, derr)
	}
	return err
}

func checkTar(r io.Reader) error {
	tr := tar.NewReader(r)
	var c ArchiveChecker
	n := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("not a tar archive: %w", err)
		}
		if err := c.Check(h); err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("empty archive")
	}
	return nil
}
