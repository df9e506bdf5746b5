package image

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// entries lists dir's names.
func entries(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n []string
	for _, e := range ents {
		n = append(n, e.Name())
	}
	return strings.Join(n, " ")
}

// A staged directory appears whole at its name, or not at all; what a
// user has at the name (a file, a link, a directory with something in it,
// one made meanwhile) is refused and kept.
func TestStagedDir(t *testing.T) {
	parent := t.TempDir()
	dst := filepath.Join(parent, "lay")
	fill := func(s *StagedDir) {
		if err := os.WriteFile(filepath.Join(s.Dir(), "index.json"), []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	s, err := CreateStagedDir(dst)
	if err != nil {
		t.Fatal(err)
	}
	fill(s)
	if got := entries(t, parent); !strings.HasPrefix(got, ".#lay.") {
		t.Errorf("staging: %q", got)
	}
	if fi, _ := os.Stat(s.Dir()); fi.Mode().Perm() != 0o700 {
		t.Errorf("staging mode %v", fi.Mode())
	}
	if err := s.Publish(); err != nil {
		t.Fatal(err)
	}
	if entries(t, parent) != "lay" || entries(t, dst) != "index.json" {
		t.Errorf("published: %q / %q", entries(t, parent), entries(t, dst))
	}

	// Refused, and nothing staged is left.
	if _, err := CreateStagedDir(dst); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("a directory with something in it: %v", err)
	}
	file := filepath.Join(parent, "file")
	os.WriteFile(file, []byte("mine"), 0o644)
	if _, err := CreateStagedDir(file); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("a file: %v", err)
	}
	os.Symlink("/etc", filepath.Join(parent, "link"))
	if _, err := CreateStagedDir(filepath.Join(parent, "link")); err == nil {
		t.Error("a link taken")
	}
	if b, _ := os.ReadFile(file); string(b) != "mine" || entries(t, parent) != "file lay link" {
		t.Errorf("after the refusals: %q", entries(t, parent))
	}

	// An empty directory is replaced; one filled meanwhile is kept.
	empty := filepath.Join(parent, "empty")
	os.Mkdir(empty, 0o755)
	s, err = CreateStagedDir(empty)
	if err != nil {
		t.Fatal(err)
	}
	fill(s)
	if err := s.Publish(); err != nil || entries(t, empty) != "index.json" {
		t.Errorf("over an empty directory: %v", err)
	}
	late := filepath.Join(parent, "late")
	s, err = CreateStagedDir(late)
	if err != nil {
		t.Fatal(err)
	}
	fill(s)
	os.Mkdir(late, 0o755)
	os.WriteFile(filepath.Join(late, "theirs"), nil, 0o644)
	if err := s.Publish(); err == nil || !strings.Contains(err.Error(), "made meanwhile") {
		t.Errorf("made meanwhile: %v", err)
	}
	s.Abort()
	if entries(t, late) != "theirs" || strings.Contains(entries(t, parent), ".#") {
		t.Errorf("after the race: %q, %q", entries(t, late), entries(t, parent))
	}

	// Abort leaves nothing.
	s, err = CreateStagedDir(filepath.Join(parent, "gone"))
	if err != nil {
		t.Fatal(err)
	}
	fill(s)
	os.MkdirAll(filepath.Join(s.Dir(), "blobs", "sha256"), 0o755)
	s.Abort()
	if got := entries(t, parent); got != "empty file late lay link" {
		t.Errorf("after abort: %q", got)
	}
}
