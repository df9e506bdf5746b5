package machine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/oci/ocitest"
	"github.com/nsbox/nsbox/machine/storage"
)

// stagedBases are the trees of bases being made (or left by a failed
// make) in m's base cache.
func stagedBases(m *Manager) []string {
	var out []string
	ents, _ := os.ReadDir(m.Bases().Dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".#") && e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

// Two machines from one image share one base: the second create fetches
// no layer and applies none; the base names the image's layers
// (BaseLayers), is kept while a machine records it, refused to cache
// remove, and goes with prune, its layers with it, once both are removed.
func TestMachinesFromOneImageShareItsBase(t *testing.T) {
	m := imageManager(t)
	reg := ocitest.NewRegistry(t)
	bl, top := baseLayer(t), ocitest.Layer(t, ocitest.File("srv/index.html", "hello"))
	ref := reg.Push(t, "app:1", ocitest.Image(t, hostPlatform, v1.Config{}, bl, top))
	ctx := context.Background()
	if err := m.createErr(ctx, "one", CreateOptions{From: ref, Storage: storage.Copy}); err != nil {
		t.Fatal(err)
	}
	bases, _ := m.Bases().List()
	if len(bases) != 1 || bases[0].Image == nil || !bootstrap.IsImageKey(bases[0].Key) || len(bases[0].Image.Layers) != 2 || bases[0].Image.Source != ref {
		t.Fatalf("bases after the first create: %+v", bases)
	}
	first := bases[0]
	// Written into the base, the file shows whether the second create
	// applies the layers again (which would make a new base) or copies.
	if err := os.WriteFile(filepath.Join(first.Root, "marker"), []byte("base"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.createErr(ctx, "two", CreateOptions{From: ref, Storage: storage.Copy}); err != nil {
		t.Fatal(err)
	}
	for _, l := range []v1.Layer{bl, top} {
		d, _ := l.Digest()
		if n := reg.BlobGets(d); n != 1 {
			t.Errorf("layer %s fetched %d times", d, n)
		}
	}
	if b, err := os.ReadFile(filepath.Join(m.Tree("two"), "marker")); err != nil || string(b) != "base" {
		t.Errorf("the second machine is not a copy of the cached base: %q %v", b, err)
	}
	for _, name := range []string{"one", "two"} {
		rec := m.storageOf(name)
		if rec.Base != first.Key || rec.Version != first.Version {
			t.Errorf("%s: storage record %+v", name, rec)
		}
		bi, err := m.BaseLayers(name)
		if err != nil || bi.Digest != first.Image.Digest || len(bi.Layers) != 2 {
			t.Fatalf("BaseLayers(%s): %+v %v", name, bi, err)
		}
		for _, l := range bi.Layers {
			if fi, err := os.Stat(l.Blob); err != nil || fi.Size() != l.Size {
				t.Errorf("layer blob %s: %v", l.Blob, err)
			}
		}
	}
	bases, _ = m.Bases().List()
	if len(bases) != 1 || strings.Join(bases[0].Machines, ",") != "one,two" {
		t.Errorf("base users: %+v", bases)
	}
	layers, err := m.ImageLayers()
	if err != nil || len(layers) != 2 {
		t.Fatalf("layers: %+v %v", layers, err)
	}
	for _, l := range layers {
		if strings.Join(l.Machines, ",") != "one,two" || len(l.Bases) != 1 || l.Bases[0] != first.Key || len(l.Images) != 1 || l.LastUsed.IsZero() {
			t.Errorf("layer %+v", l)
		}
	}
	if err := m.RemoveLayer(ctx, layers[0].Digest); !errors.Is(err, ErrLayerInUse) || strings.Contains(err.Error(), "\n") {
		t.Errorf("remove of a layer in use: %v", err)
	}
	if err := m.Bases().Remove(ctx, first.Key); !errors.Is(err, bootstrap.ErrBaseInUse) {
		t.Errorf("remove of a base in use: %v", err)
	}
	if _, err := m.Bases().Refresh(ctx, first, nil); !errors.Is(err, bootstrap.ErrImageBase) {
		t.Errorf("refresh of an image base: %v", err)
	}
	// diff compares with the image base.
	if err := os.WriteFile(filepath.Join(m.Tree("one"), "written"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	rep, err := m.Diff(ctx, "one", DiffOptions{})
	if err != nil || rep.Base != first.Key {
		t.Fatalf("diff: %+v %v", rep, err)
	}
	seen := map[string]bool{}
	for _, e := range rep.Entries {
		seen[e.Path] = true
	}
	if !seen["/written"] || !seen["/marker"] {
		t.Errorf("diff entries: %+v", rep.Entries)
	}

	items, err := m.Prune(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		if it.Kind == PruneBase || it.Kind == PruneLayers {
			t.Errorf("prune takes what machines use: %+v", it)
		}
	}
	for _, name := range []string{"one", "two"} {
		if err := m.Remove(ctx, name, false); err != nil {
			t.Fatal(err)
		}
	}
	for _, dry := range []bool{true, false} {
		items, err := m.Prune(ctx, dry)
		if err != nil {
			t.Fatal(err)
		}
		kinds := map[string]int{}
		for _, it := range items {
			kinds[it.Kind]++
		}
		if kinds[PruneBase] != 1 || kinds[PruneLayers] != 2 {
			t.Errorf("prune (dry run %v): %+v", dry, items)
		}
	}
	if bases, _ := m.Bases().List(); len(bases) != 0 {
		t.Errorf("bases after prune: %+v", bases)
	}
	if layers, _ := m.ImageLayers(); len(layers) != 0 {
		t.Errorf("layers after prune: %+v", layers)
	}
}

// Creates from one image at once flatten it once: every machine is over
// the one version, and no half-made base is left or used.
func TestConcurrentCreatesFromOneImage(t *testing.T) {
	m := imageManager(t)
	reg := ocitest.NewRegistry(t)
	ref := reg.Push(t, "app:1", ocitest.Image(t, hostPlatform, v1.Config{}, baseLayer(t), ocitest.Layer(t, ocitest.File("srv/a", "a"))))
	names := []string{"c1", "c2", "c3", "c4"}
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.createErr(context.Background(), n, CreateOptions{From: ref, Storage: storage.Copy})
		}()
	}
	wg.Wait()
	versions := map[string]bool{}
	for i, n := range names {
		if errs[i] != nil {
			t.Errorf("%s: %v", n, errs[i])
			continue
		}
		versions[m.storageOf(n).Version] = true
		if b, err := os.ReadFile(filepath.Join(m.Tree(n), "srv/a")); err != nil || string(b) != "a" {
			t.Errorf("%s: srv/a %q %v", n, b, err)
		}
	}
	if len(versions) != 1 {
		t.Errorf("the image was flattened into %d versions", len(versions))
	}
	if left := stagedBases(m); len(left) != 0 {
		t.Errorf("left: %v", left)
	}
}

// A pruned image is pulled again: its layers went with its base.
func TestPrunedImageIsPulledAgain(t *testing.T) {
	m := imageManager(t)
	reg := ocitest.NewRegistry(t)
	bl := baseLayer(t)
	ref := reg.Push(t, "app:1", ocitest.Image(t, hostPlatform, v1.Config{}, bl))
	d, _ := bl.Digest()
	if err := m.createErr(context.Background(), "ok", CreateOptions{From: ref, Storage: storage.Copy}); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(context.Background(), "ok", false); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Prune(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if err := m.createErr(context.Background(), "ok", CreateOptions{From: ref, Storage: storage.Copy}); err != nil {
		t.Fatal(err)
	}
	if n := reg.BlobGets(d); n != 2 {
		t.Errorf("a pruned layer fetched %d times, want 2", n)
	}
}

// By default a machine from an image is an overlay over its base (where
// overlayfs serves, as for a release): two share the one lower tree.
func TestOverlaysOverOneImageBase(t *testing.T) {
	m := imageManager(t)
	reg := ocitest.NewRegistry(t)
	ref := reg.Push(t, "app:1", ocitest.Image(t, hostPlatform, v1.Config{}, baseLayer(t)))
	ctx := context.Background()
	for _, n := range []string{"o1", "o2"} {
		if err := m.createErr(ctx, n, CreateOptions{From: ref}); err != nil {
			t.Fatal(err)
		}
	}
	r1, r2 := m.storageOf("o1"), m.storageOf("o2")
	if r1.Kind != storage.Overlay {
		t.Skipf("no overlay here: %+v", r1)
	}
	if r1.Lower == "" || r1.Lower != r2.Lower || !bootstrap.IsImageKey(r1.Base) {
		t.Errorf("records %+v %+v", r1, r2)
	}
	err := m.withTree(ctx, "o2", func() error {
		b, err := os.ReadFile(filepath.Join(m.Tree("o2"), "etc/hostname"))
		if err == nil && string(b) != "o2\n" {
			t.Errorf("hostname %q", b)
		}
		_, err = os.Stat(filepath.Join(m.Tree("o2"), "usr/bin/app"))
		return err
	})
	if err != nil {
		t.Error(err)
	}
	for _, n := range []string{"o1", "o2"} {
		if err := m.Remove(ctx, n, false); err != nil {
			t.Fatal(err)
		}
	}
}
