package machine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/image"
	"github.com/nsbox/nsbox/machine/image/imagetest"
	"github.com/nsbox/nsbox/machine/oci"
	"github.com/nsbox/nsbox/machine/oci/ocitest"
	"github.com/nsbox/nsbox/machine/storage"
)

func imageManager(t *testing.T) *Manager {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("GNU tar keeps owners as root only")
	}
	m, _ := newTestManager(t, &fakeMachined{})
	m.Runner = host.ExecRunner{}
	return m
}

var hostPlatform = "linux/" + runtime.GOARCH

func baseLayer(t *testing.T) v1.Layer {
	return ocitest.Layer(t, ocitest.Dir("etc/"), ocitest.File("etc/os-release", "ID=debian\n"), ocitest.File("etc/hostname", "builder\n"),
		ocitest.Dir("usr/"), ocitest.Dir("usr/bin/"), ocitest.File("usr/bin/app", "#!/bin/sh\n"), ocitest.Symlink("bin", "usr/bin"),
		ocitest.Dir("var/"), ocitest.Dir("var/cache/"), ocitest.File("var/cache/old", "old"), ocitest.File("usr/bin/gone", "x"))
}

func TestCreateFromImage(t *testing.T) {
	m := imageManager(t)
	reg := ocitest.NewRegistry(t)
	cfg := v1.Config{Entrypoint: []string{"/usr/bin/app"}, Cmd: []string{"serve"}, Env: []string{"PATH=/usr/bin", "MODE=test"}, WorkingDir: "/srv", User: "1000:1000"}
	top := ocitest.Layer(t, ocitest.File("var/cache/.wh..wh..opq", ""), ocitest.File("var/cache/new", "new"), ocitest.File("usr/bin/.wh.gone", ""),
		ocitest.Dir("srv/"), ocitest.File("srv/index.html", "hello"))
	ref := reg.Push(t, "app:1", ocitest.Image(t, hostPlatform, cfg, baseLayer(t), top))
	if err := m.createErr(context.Background(), "web", CreateOptions{From: ref, Storage: storage.Copy}); err != nil {
		t.Fatal(err)
	}
	tree := m.Tree("web")
	for p, want := range map[string]string{"etc/hostname": "web\n", "srv/index.html": "hello", "var/cache/new": "new", "etc/machine-id": ""} {
		if b, err := os.ReadFile(filepath.Join(tree, p)); err != nil || string(b) != want {
			t.Errorf("%s: %q %v", p, b, err)
		}
	}
	for _, p := range []string{"var/cache/old", "usr/bin/gone", "var/cache/.wh..wh..opq", "usr/bin/.wh.gone"} {
		if _, err := os.Lstat(filepath.Join(tree, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is there: %v", p, err)
		}
	}
	rec := m.ImageOf("web")
	if rec == nil || rec.Source != ref || len(rec.Layers) != 2 || rec.Config.WorkingDir != "/srv" || rec.Config.User != "1000:1000" ||
		strings.Join(rec.Config.Entrypoint, " ") != "/usr/bin/app" || strings.Join(rec.Config.Env, " ") != "PATH=/usr/bin MODE=test" {
		t.Errorf("record: %+v", rec)
	}
	// A second image over the same base layer fetches only its own.
	bl := baseLayer(t)
	bd, _ := bl.Digest()
	ref2 := reg.Push(t, "other:1", ocitest.Image(t, hostPlatform, v1.Config{}, bl, ocitest.Layer(t, ocitest.File("other", "2"))))
	if err := m.createErr(context.Background(), "web2", CreateOptions{From: ref2, Storage: storage.Copy}); err != nil {
		t.Fatal(err)
	}
	if n := reg.BlobGets(bd); n != 1 {
		t.Errorf("the shared base layer was fetched %d times", n)
	}
	if err := m.createErr(context.Background(), "web", CreateOptions{From: ref2}); !errors.Is(err, ErrExists) {
		t.Errorf("create over a machine: %v", err)
	}
	// Removal takes the record.
	if err := m.Remove(context.Background(), "web2", false); err != nil {
		t.Fatal(err)
	}
	if m.ImageOf("web2") != nil {
		t.Error("record of a removed machine kept")
	}
}

func TestCreateFromHostileImages(t *testing.T) {
	m := imageManager(t)
	reg := ocitest.NewRegistry(t)
	victim := imagetest.Victim(t)
	outside := filepath.Dir(victim)
	for _, tc := range []struct {
		what   string
		layers []v1.Layer
		o      CreateOptions
		want   error
		text   string
	}{
		{"a member with ..", []v1.Layer{ocitest.Layer(t, ocitest.File("../../x", "x"))}, CreateOptions{}, image.ErrUnsafeArchive, ".. component"},
		{"an absolute path", []v1.Layer{ocitest.Layer(t, ocitest.File(victim, "pwned"))}, CreateOptions{}, image.ErrUnsafeArchive, "absolute path"},
		{"a whiteout with ..", []v1.Layer{baseLayer(t), ocitest.Layer(t, ocitest.File("etc/../../.wh.x", ""))}, CreateOptions{}, image.ErrUnsafeArchive, ".. component"},
		{"a symlink, then a write through it", []v1.Layer{ocitest.Layer(t, ocitest.Symlink("evil", outside)), ocitest.Layer(t, ocitest.File("evil/shadow", "pwned"))},
			CreateOptions{}, image.ErrUnsafeArchive, "through the symbolic link"},
		{"a hard link to outside", []v1.Layer{ocitest.Layer(t, ocitest.Hardlink("x", victim))}, CreateOptions{}, image.ErrUnsafeArchive, "absolute path"},
		{"a layer over the cap", []v1.Layer{baseLayer(t), ocitest.Layer(t, ocitest.File("big", strings.Repeat("b", 200<<10)))},
			CreateOptions{MaxImageBytes: 100 << 10}, image.ErrTooLarge, "cap on an image"},
		{"a manifest for another architecture", []v1.Layer{baseLayer(t)}, CreateOptions{Platform: "linux/riscv64"}, oci.ErrNoPlatform, "not linux/riscv64"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			ref := reg.Push(t, "hostile:1", ocitest.Image(t, hostPlatform, v1.Config{}, tc.layers...))
			o := tc.o
			o.From = ref
			err := m.createErr(context.Background(), "bad", o)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) || strings.Contains(err.Error(), "\n") {
				t.Errorf("got %v, want one line: %v ... %s", err, tc.want, tc.text)
			}
			imagetest.Untouched(t, victim)
			if ents, _ := os.ReadDir(outside); len(ents) != 1 {
				t.Errorf("%s holds %d entries", outside, len(ents))
			}
			if left := imagetest.Leftovers(m.Store()); len(left) != 0 {
				t.Errorf("staging left: %v", left)
			}
			if left := stagedBases(m); len(left) != 0 {
				t.Errorf("base staging left: %v", left)
			}
			if bases, _ := m.Bases().List(); len(bases) != 0 {
				t.Errorf("a base made of a hostile image: %+v", bases)
			}
			if _, err := os.Lstat(m.Tree("bad")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("machine made: %v", err)
			}
			if m.ImageOf("bad") != nil {
				t.Error("record written")
			}
		})
	}
}

func TestCreateFromRefusesFlags(t *testing.T) {
	m := imageManager(t)
	refused := []CreateOptions{
		{From: "docker://x", Storage: StorageOverlay, NoCache: true},
		{From: "docker://x", Platform: "linux"},
		{From: "nope:x"},
	}
	if !bootstrap.OnBtrfs(m.RootDir) {
		refused = append(refused, CreateOptions{From: "docker://x", Storage: storage.Btrfs})
	}
	for _, o := range refused {
		if err := m.createErr(context.Background(), "web", o); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("%+v: %v", o, err)
		}
	}
}

// createErr is Create for tests that need only its error.
func (m *Manager) createErr(ctx context.Context, name string, o CreateOptions) error {
	_, err := m.Create(ctx, name, o)
	return err
}
