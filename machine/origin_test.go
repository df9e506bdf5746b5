package machine

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/oci/ocitest"
	"github.com/nsbox/nsbox/machine/storage"
)

// A create of a machine made from the same image changes nothing and
// asks the registry nothing; another image, platform or kind of source
// is "exists", saying what the machine was made from.
func TestCreateAgainFromImage(t *testing.T) {
	m := imageManager(t)
	reg := ocitest.NewRegistry(t)
	var asked atomic.Int32
	reg.SetWrap(func(http.ResponseWriter, *http.Request) bool { asked.Add(1); return false })
	ref := reg.Push(t, "app:1", ocitest.Image(t, hostPlatform, v1.Config{}, baseLayer(t)))
	ref2 := reg.Push(t, "app:2", ocitest.Image(t, hostPlatform, v1.Config{}, baseLayer(t), ocitest.Layer(t, ocitest.File("two", "2"))))
	ctx := context.Background()
	res, err := m.Create(ctx, "web", CreateOptions{From: ref, Storage: storage.Copy})
	if err != nil || res.Existed || res.Origin.Kind != OriginImage || !strings.HasPrefix(res.Origin.Digest, "sha256:") {
		t.Fatalf("first create: %+v %v", res, err)
	}
	digest := res.Origin.Digest
	if err := os.WriteFile(filepath.Join(m.Tree("web"), "mine"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := asked.Load()
	// The same reference, and spelt otherwise: with its platform given.
	for _, o := range []CreateOptions{{From: ref}, {From: ref, Platform: hostPlatform}, {From: ref, Storage: storage.Overlay}} {
		res, err = m.Create(ctx, "web", o)
		if err != nil || !res.Existed || res.Origin.Digest != digest || res.Origin.Source != ref {
			t.Errorf("create again %+v: %+v %v", o, res, err)
		}
	}
	if n := asked.Load() - before; n != 0 {
		t.Errorf("a create of a machine that exists asked the registry %d times", n)
	}
	if b, err := os.ReadFile(filepath.Join(m.Tree("web"), "mine")); err != nil || string(b) != "kept" {
		t.Errorf("the machine changed: %q %v", b, err)
	}
	for _, tc := range []struct {
		what string
		o    CreateOptions
		says string
	}{
		{"another tag", CreateOptions{From: ref2}, "not " + ref2},
		{"another platform", CreateOptions{From: ref, Platform: "linux/riscv64"}, "linux/riscv64"},
		{"a release", CreateOptions{Release: "bookworm"}, "not release bookworm"},
		{"a URL", CreateOptions{From: "https://example.org/r.tar.gz"}, "not https://example.org/r.tar.gz"},
	} {
		_, err := m.Create(ctx, "web", tc.o)
		if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "made from "+ref+" ("+digest[:7+12]) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: %v", tc.what, err)
		}
	}
	if n := asked.Load() - before; n != 0 {
		t.Errorf("a refused create asked the registry %d times", n)
	}
	// A clone carries the record: it was made from the image too.
	if err := m.Clone(ctx, "web", "copy"); err != nil {
		t.Fatal(err)
	}
	if res, err := m.Create(ctx, "copy", CreateOptions{From: ref}); err != nil || !res.Existed {
		t.Errorf("create of a clone: %+v %v", res, err)
	}
	// A machine nsbox has no record of.
	mkMachine(t, m, "plain")
	if _, err := m.Create(ctx, "plain", CreateOptions{From: ref}); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "did not record") {
		t.Errorf("a machine without a record: %v", err)
	}
	// Bad input is said as before, whether the machine exists or not.
	if _, err := m.Create(ctx, "web", CreateOptions{From: "docker://bad ref"}); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("a bad reference: %v", err)
	}
}

// Two creates of one name at once: one makes it, the other waits and
// finds it whole, made from the same source; never a half machine.
func TestCreateRace(t *testing.T) {
	m := imageManager(t)
	reg := ocitest.NewRegistry(t)
	ref := reg.Push(t, "app:1", ocitest.Image(t, hostPlatform, v1.Config{}, baseLayer(t)))
	var wg sync.WaitGroup
	results := make([]Created, 4)
	errs := make([]error, 4)
	var waited atomic.Int32
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = m.Create(context.Background(), "web", CreateOptions{From: ref, Storage: storage.Copy,
				Notice: func(l string) {
					if strings.Contains(l, "waiting for another create of web") {
						waited.Add(1)
					}
				}})
		}()
	}
	wg.Wait()
	made := 0
	for i := range results {
		if errs[i] != nil {
			t.Errorf("create %d: %v", i, errs[i])
		}
		if !results[i].Existed {
			made++
		}
	}
	if made != 1 {
		t.Errorf("%d creates made the machine, want 1", made)
	}
	if waited.Load() == 0 {
		t.Error("no create waited for another")
	}
	if m.ImageOf("web") == nil {
		t.Error("the machine has no image record")
	}
	noStaging(t, m)
}

// A machine from a URL remembers it, through a rename too.
func TestCreateAgainFromURL(t *testing.T) {
	m := realManager(t)
	s, _ := urlServer(t, nil)
	url := s.URL + "/img/r.tar.gz"
	ctx := context.Background()
	if _, err := m.Create(ctx, "web", CreateOptions{From: url}); err != nil {
		t.Fatal(err)
	}
	if err := m.Rename(ctx, "web", "site"); err != nil {
		t.Fatal(err)
	}
	res, err := m.Create(ctx, "site", CreateOptions{From: url})
	if err != nil || !res.Existed || res.Origin.Kind != OriginURL || res.Origin.Source != url {
		t.Errorf("create again: %+v %v", res, err)
	}
	if n := s.Gets("/img/r.tar.gz"); n != 1 {
		t.Errorf("fetched %d times", n)
	}
	if _, err := m.Create(ctx, "site", CreateOptions{From: s.URL + "/img/other.tar"}); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "made from "+url) {
		t.Errorf("another URL: %v", err)
	}
}

// A release's machine is judged by its base key: release, architecture,
// variant, mirror and packages.
func TestCreateAgainFromRelease(t *testing.T) {
	m, _ := newTestManager(t, &fakeMachined{})
	rel, err := bootstrap.LookupRelease("bookworm", "")
	if err != nil {
		t.Fatal(err)
	}
	key := bootstrap.BaseKey(bootstrap.Options{Release: rel, Variant: "minbase"})
	mkMachine(t, m, "bookworm")
	m.recordBase("bookworm", storage.Record{Base: key, Version: "1", Bases: m.Bases().Dir})
	ctx := context.Background()
	// By its name, and with the release given.
	for _, o := range []CreateOptions{{Variant: "minbase"}, {Release: "bookworm", Variant: "minbase", Storage: storage.Copy}} {
		if res, err := m.Create(ctx, "bookworm", o); err != nil || !res.Existed || res.Origin.Base != key || res.Origin.Source != "bookworm" {
			t.Errorf("create again %+v: %+v %v", o, res, err)
		}
	}
	for _, o := range []CreateOptions{{Release: "trixie", Variant: "minbase"}, {Variant: "minbase", Include: []string{"nginx"}},
		{Variant: "buildd"}, {Variant: "minbase", Mirror: "http://deb.example.org/debian"}} {
		if _, err := m.Create(ctx, "bookworm", o); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "made from release bookworm (base "+key+")") {
			t.Errorf("another base %+v: %v", o, err)
		}
	}
	if _, err := m.Create(ctx, "bookworm", CreateOptions{Release: "hamm"}); err == nil || errors.Is(err, ErrExists) {
		t.Errorf("an unknown release: %v", err)
	}
}
