package machine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/dbusapi"
	"github.com/nsbox/nsbox/machine/storage"
)

// TestDiffAgainstTheRecordedBase: a copy is compared with the version of
// the base its record names, in the cache the record names; a machine
// without one, a version gone, a bad path and an unknown machine are
// errors of their own; a rename keeps the record.
func TestDiffAgainstTheRecordedBase(t *testing.T) {
	ctx := context.Background()
	f := &fakeMachined{machines: map[string]dbusapi.Machine{}, result: "done"}
	m, _ := newTestManager(t, f)
	bases := filepath.Join(t.TempDir(), "bases")
	root := filepath.Join(bases, "deb", "root")
	for _, d := range []string{"etc", "usr/lib/systemd"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "usr", "lib", "systemd", "systemd"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(bases, "deb", "base.json"), []byte(`{"key":"deb","version":"v1"}`), 0o644)
	os.WriteFile(filepath.Join(root, "etc", "os-release"), []byte("ID=debian\nVERSION_ID=\"12\"\n"), 0o644)
	mkMachine(t, m, "web")
	os.WriteFile(filepath.Join(m.Dir("web"), "etc", "new"), []byte("x"), 0o644)

	_, err := m.Diff(ctx, "web", DiffOptions{})
	if !errors.Is(err, ErrNoBase) || !strings.Contains(err.Error(), "web was not made from a cached base") {
		t.Errorf("no record: %v", err)
	}
	if err := m.writeStorage("web", storage.Record{Kind: storage.Copy, Base: "deb", Version: "v1", Bases: bases}); err != nil {
		t.Fatal(err)
	}
	rep, err := m.Diff(ctx, "web", DiffOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range rep.Entries {
		got = append(got, e.Change.Letter()+" "+e.Path)
	}
	if strings.Join(got, ",") != "A /etc/new" || rep.Base != "deb" || rep.BaseVersion != "v1" || rep.Storage != "copy" || rep.Path != "/" {
		t.Errorf("diff: %v %+v", got, rep)
	}
	if _, err := m.Diff(ctx, "web", DiffOptions{Path: "/etc/os-release/x"}); err == nil || !strings.Contains(err.Error(), "/etc/os-release is not a directory") {
		t.Errorf("a path through a file: %v", err)
	}
	if _, err := m.Diff(ctx, "web", DiffOptions{Path: "a\x00b"}); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("a path with NUL: %v", err)
	}
	if _, err := m.Diff(ctx, "nope", DiffOptions{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown machine: %v", err)
	}

	if err := m.Rename(ctx, "web", "www"); err != nil {
		t.Fatal(err)
	}
	if rep, err := m.Diff(ctx, "www", DiffOptions{}); err != nil || len(rep.Entries) != 1 {
		t.Errorf("after a rename: %+v %v", rep, err)
	}
	if _, err := os.Stat(m.storagePath("web")); !os.IsNotExist(err) {
		t.Errorf("the old name's record stays: %v", err)
	}

	os.WriteFile(filepath.Join(bases, "deb", "base.json"), []byte(`{"key":"deb","version":"v2"}`), 0o644)
	if _, err := m.Diff(ctx, "www", DiffOptions{}); !errors.Is(err, ErrNoBase) || !strings.Contains(err.Error(), "version v1 of base deb, which is gone") {
		t.Errorf("version gone: %v", err)
	}
}
