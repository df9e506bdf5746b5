package machine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nsbox/nsbox/dbusapi"
	"github.com/nsbox/nsbox/machine/host"
	"golang.org/x/sys/unix"
)

// mkImage makes a directory image of machinectl's: a tree with os-release
// and /usr in dir.
func mkImage(t *testing.T, dir, name, osRelease string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	for _, d := range []string{"etc", "usr/bin"} {
		if err := os.MkdirAll(filepath.Join(path, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(path, "etc", "os-release"), []byte(osRelease), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(path, "usr", "bin", "hello"), []byte("#!/bin/sh\necho hello\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func writeImageFile(t *testing.T, path, text string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// setImmutable sets or clears FS_IMMUTABLE_FL on path, or skips the test
// where the file system or the caller cannot.
func setImmutable(t *testing.T, path string, on bool) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil {
		t.Skipf("no attributes here: %v", err)
	}
	if on {
		flags |= fsImmutable
	} else {
		flags &^= fsImmutable
	}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags)); err != nil {
		t.Skipf("cannot set the immutable flag here: %v", err)
	}
}

func TestMachinectlImagesFindsWhatMachinedWould(t *testing.T) {
	m, _ := newTestManager(t, &fakeMachined{machines: map[string]dbusapi.Machine{}})
	vendor := filepath.Join(filepath.Dir(m.ImagesDir), "vendor")
	m.ImageSearchPath = []string{m.ImagesDir, vendor}
	mkMachine(t, m, "mine")
	m.published("mine") // nsbox's own link in ImagesDir: its machine, not an image
	mkImage(t, m.ImagesDir, "fed", "ID=fedora\nVERSION_ID=40\n")
	writeImageFile(t, filepath.Join(m.ImagesDir, "disk.raw"), "raw", 0o644)
	writeImageFile(t, filepath.Join(m.ImagesDir, "rodisk.raw"), "raw", 0o444)
	if err := os.Symlink("/etc", filepath.Join(m.ImagesDir, "evil")); err != nil { // a link planted to a host directory
		t.Fatal(err)
	}
	writeImageFile(t, filepath.Join(m.ImagesDir, ".#fed.lck"), "", 0o600)
	mkImage(t, m.ImagesDir, ".#fed1234567890abcdef", "ID=debian\n") // machinectl's staging tree
	mkImage(t, m.ImagesDir, "bad_name", "ID=debian\n")
	mkImage(t, m.ImagesDir, "-rf", "ID=debian\n")
	writeImageFile(t, filepath.Join(m.ImagesDir, "fed.nspawn"), "[Exec]\n", 0o644)
	writeImageFile(t, filepath.Join(m.ImagesDir, "notes.txt"), "", 0o644)
	mkImage(t, vendor, "fed", "ID=other\n") // shadowed by the first directory's
	mkImage(t, vendor, "vend", "ID=debian\n")

	got := map[string]MachinectlImage{}
	var names []string
	for _, img := range m.machinectlImages() {
		got[img.Name] = img
		names = append(names, img.Name)
	}
	if want := []string{"disk", "fed", "rodisk", "vend"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("images %v, want %v", names, want)
	}
	if g := got["fed"]; g.Type != ImageDirectory || g.Dir != m.ImagesDir || g.Path != filepath.Join(m.ImagesDir, "fed") || g.ReadOnly {
		t.Errorf("fed: %+v", g)
	}
	if g := got["disk"]; g.Type != ImageRaw || g.Path != filepath.Join(m.ImagesDir, "disk.raw") || g.ReadOnly {
		t.Errorf("disk: %+v", g)
	}
	if g := got["rodisk"]; !g.ReadOnly {
		t.Errorf("a raw image nobody may write is read-only: %+v", g)
	}
	if g := got["vend"]; g.Dir != vendor {
		t.Errorf("vend: %+v", g)
	}
	for _, n := range []string{"fed", "disk", "vend"} {
		if img, ok := m.machinectlImage(n); !ok || img != got[n] {
			t.Errorf("machinectlImage(%s) = %+v %v, want %+v", n, img, ok, got[n])
		}
	}
	for _, n := range []string{"mine", "evil", "bad_name", "-rf", "notes", ".#fed", "../machines/fed", "nope"} {
		if img, ok := m.machinectlImage(n); ok {
			t.Errorf("%s is no image of machinectl's: %+v", n, img)
		}
	}
	setImmutable(t, filepath.Join(m.ImagesDir, "fed"), true)
	defer setImmutable(t, filepath.Join(m.ImagesDir, "fed"), false)
	if img, _ := m.machinectlImage("fed"); !img.ReadOnly {
		t.Errorf("machinectl read-only sets the immutable flag: %+v", img)
	}
}

func TestListAndStatusShowImages(t *testing.T) {
	ctx := context.Background()
	f := &fakeMachined{machines: map[string]dbusapi.Machine{}}
	m, _ := newTestManager(t, f)
	mkMachine(t, m, "web")
	m.published("web")
	mkImage(t, m.ImagesDir, "fed", "ID=fedora\nVERSION_ID=40\n")
	mkImage(t, m.ImagesDir, "up", "ID=debian\nVERSION_ID=12\n")
	writeImageFile(t, filepath.Join(m.ImagesDir, "disk.raw"), "raw", 0o644)
	// "up" was started by machinectl start: machined reports its root.
	f.machines["up"] = dbusapi.Machine{Name: "up", Class: "container", RootDirectory: filepath.Join(m.ImagesDir, "up"), Leader: os.Getpid()}

	infos, err := m.List(ctx, ListOptions{Usage: true})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Info{}
	var names []string
	for _, i := range infos {
		byName[i.Name] = i
		names = append(names, i.Name)
	}
	if want := []string{"disk", "fed", "up", "web"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("list %v, want %v (one row each)", names, want)
	}
	fed := byName["fed"]
	if fed.Managed || fed.State != "stopped" || fed.ImageDir != m.ImagesDir || fed.ImageType != ImageDirectory ||
		fed.Root != filepath.Join(m.ImagesDir, "fed") || fed.OS != "fedora" || fed.Version != "40" || fed.Usage <= 0 || fed.Addresses == nil {
		t.Errorf("fed: %+v", fed)
	}
	if up := byName["up"]; up.Managed || up.State != "running" || up.ImageType != ImageDirectory || up.OS != "debian" {
		t.Errorf("up: %+v", up)
	}
	if d := byName["disk"]; d.Managed || d.ImageType != ImageRaw || d.OS != "" || d.Root != filepath.Join(m.ImagesDir, "disk.raw") {
		t.Errorf("disk: %+v", d)
	}
	if w := byName["web"]; !w.Managed || w.ImageType != "" {
		t.Errorf("web: %+v", w)
	}

	i, err := m.Status(ctx, "fed", ListOptions{})
	if err != nil || i.Managed || i.ImageType != ImageDirectory || i.OS != "fedora" || i.Options != nil {
		t.Errorf("status fed: %+v %v", i, err)
	}
	if i, err := m.Status(ctx, "disk", ListOptions{}); err != nil || i.ImageType != ImageRaw {
		t.Errorf("status disk: %+v %v", i, err)
	}
}

// imageUntouched checks that image path is as mkImage made it and that
// nsbox made nothing of name.
func imageUntouched(t *testing.T, m *Manager, what, name, path string) {
	t.Helper()
	if b, err := os.ReadFile(filepath.Join(path, "usr", "bin", "hello")); err != nil || !strings.Contains(string(b), "hello") {
		t.Errorf("%s: the image changed: %v", what, err)
	}
	for _, p := range []string{m.Tree(name), m.Path(name), m.namePath(name)} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s: %s was made", what, p)
		}
	}
}

func TestChangingCommandsRefuseImages(t *testing.T) {
	ctx := context.Background()
	m, runner := newTestManager(t, &fakeMachined{machines: map[string]dbusapi.Machine{}})
	mkMachine(t, m, "web")
	m.published("web")
	path := mkImage(t, m.ImagesDir, "fed", "ID=fedora\n")
	writeImageFile(t, filepath.Join(m.ImagesDir, "disk.raw"), "raw", 0o644)
	_, shellErr := m.Shell(ctx, "fed", ExecOptions{}, []string{"true"})
	for _, tc := range []struct {
		what string
		err  error
		want error
		hint string
	}{
		{"boot", m.Boot(ctx, "fed", BootRequest{}), ErrMachinectlImage, "adopt it first (nsbox adopt fed)"},
		{"remove", m.Remove(ctx, "fed", true), ErrMachinectlImage, "nsbox adopt fed"},
		{"rename", m.Rename(ctx, "fed", "fed2"), ErrMachinectlImage, "nsbox adopt fed"},
		{"clone", m.Clone(ctx, "fed", "fed2"), ErrMachinectlImage, "nsbox adopt fed"},
		{"export", m.Export(ctx, "fed", filepath.Join(t.TempDir(), "x.tar")), ErrMachinectlImage, "nsbox adopt fed"},
		{"read-only", m.SetReadOnly(ctx, "fed", true), ErrMachinectlImage, "nsbox adopt fed"},
		{"shell", shellErr, ErrMachinectlImage, "nsbox adopt fed"},
		{"stop", m.Stop(ctx, "fed", time.Second), ErrNotRunning, "machinectl's image in " + m.ImagesDir},
		{"boot raw", m.Boot(ctx, "disk", BootRequest{}), ErrMachinectlImage, "raw disk image"},
		{"clone onto", m.Clone(ctx, "web", "fed"), ErrExists, "adopt it: nsbox adopt fed"},
		{"rename onto", m.Rename(ctx, "web", "fed"), ErrExists, "adopt it: nsbox adopt fed"},
	} {
		if !errors.Is(tc.err, tc.want) || !strings.Contains(tc.err.Error(), tc.hint) {
			t.Errorf("%s: %v, want %v saying %q", tc.what, tc.err, tc.want, tc.hint)
		}
		if tc.err != nil && strings.Contains(tc.err.Error(), "\n") {
			t.Errorf("%s: more than one line: %q", tc.what, tc.err)
		}
	}
	imageUntouched(t, m, "refused commands", "fed", path)
	if len(runner.ran) != 0 {
		t.Errorf("refused commands ran %v", runner.ran)
	}
	if _, err := os.Stat(m.Tree("web")); err != nil {
		t.Errorf("web: %v", err)
	}
}

func TestAdoptMovesTheImage(t *testing.T) {
	ctx := context.Background()
	m, _ := newTestManager(t, &fakeMachined{machines: map[string]dbusapi.Machine{}})
	mkImage(t, m.ImagesDir, "fed", "ID=fedora\nVERSION_ID=40\n")
	settings := "[Exec]\nPrivateUsers=no\nEnvironment=KEEP=1\n"
	writeImageFile(t, m.settingsPath("fed"), settings, 0o644)
	// What an earlier machine of the name left, and an adopt killed after
	// its copy: both go.
	writeImageFile(t, m.storagePath("fed"), `{"kind":"overlay"}`, 0o600)
	left := mkImage(t, m.ImagesDir, ".#adopt.fed.0123456789abcdef", "ID=debian\n")

	if err := m.Adopt(ctx, "fed", ""); err != nil {
		t.Fatal(err)
	}
	if !m.exists("fed") || m.storageOf("fed").Kind != "copy" {
		t.Fatalf("fed is not an nsbox machine: %v %+v", m.exists("fed"), m.storageOf("fed"))
	}
	if b, err := os.ReadFile(filepath.Join(m.Tree("fed"), "usr", "bin", "hello")); err != nil || !strings.Contains(string(b), "hello") {
		t.Errorf("the tree did not move whole: %v", err)
	}
	if cur, err := os.Readlink(filepath.Join(m.ImagesDir, "fed")); err != nil || cur != m.Tree("fed") {
		t.Errorf("%s/fed is %q %v, want nsbox's link to %s", m.ImagesDir, cur, err, m.Tree("fed"))
	}
	if cur, err := os.Readlink(m.Path("fed")); err != nil || cur != storeLink("fed") {
		t.Errorf("%s: %q %v", m.Path("fed"), cur, err)
	}
	if b, _ := os.ReadFile(m.settingsPath("fed")); string(b) != settings {
		t.Errorf("settings %q, want them kept", b)
	}
	if o, _ := m.Options("fed"); o.PrivateUsers {
		t.Errorf("the image's settings are nsbox's now: %+v", o)
	}
	for _, p := range []string{left, filepath.Join(m.ImagesDir, ".#fed.lck")} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left", p)
		}
	}
	if _, ok := m.machinectlImage("fed"); ok {
		t.Error("fed is still machinectl's image")
	}
	infos, _ := m.List(ctx, ListOptions{})
	if len(infos) != 1 || !infos[0].Managed || infos[0].ImageType != "" || infos[0].OS != "fedora" {
		t.Errorf("list after adopt: %+v", infos)
	}
	if err := m.Adopt(ctx, "fed", ""); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "an nsbox machine already") {
		t.Errorf("adopt again: %v", err)
	}

	// A new name: the settings file follows.
	mkImage(t, m.ImagesDir, "old", "ID=debian\n")
	writeImageFile(t, m.settingsPath("old"), settings, 0o644)
	if err := m.Adopt(ctx, "old", "new"); err != nil {
		t.Fatal(err)
	}
	if !m.exists("new") || m.exists("old") {
		t.Errorf("old/new: %v %v", m.exists("old"), m.exists("new"))
	}
	if _, err := os.Lstat(m.settingsPath("old")); err == nil {
		t.Error("old's settings file stayed")
	}
	if b, _ := os.ReadFile(m.settingsPath("new")); string(b) != settings {
		t.Errorf("new's settings %q", b)
	}
	if _, err := os.Lstat(filepath.Join(m.ImagesDir, "old")); err == nil {
		t.Error("old is still in the images directory")
	}
}

func TestAdoptRefusals(t *testing.T) {
	ctx := context.Background()
	f := &fakeMachined{machines: map[string]dbusapi.Machine{}}
	m, runner := newTestManager(t, f)
	vendor := filepath.Join(filepath.Dir(m.ImagesDir), "vendor")
	m.ImageSearchPath = []string{m.ImagesDir, vendor}
	mkMachine(t, m, "web")
	m.published("web")
	fed := mkImage(t, m.ImagesDir, "fed", "ID=fedora\n")
	runs := mkImage(t, m.ImagesDir, "runs", "ID=fedora\n")
	f.machines["runs"] = dbusapi.Machine{Name: "runs", Class: "container", RootDirectory: runs, Leader: os.Getpid()}
	vend := mkImage(t, vendor, "vend", "ID=debian\n")
	writeImageFile(t, filepath.Join(m.ImagesDir, "disk.raw"), "raw", 0o644)
	empty := filepath.Join(m.ImagesDir, "empty")
	os.MkdirAll(filepath.Join(empty, "data"), 0o755)
	badset := mkImage(t, m.ImagesDir, "badset", "ID=debian\n")
	writeImageFile(t, m.settingsPath("badset"), "[Exec]\nPrivateUsers=\x1b[2J\n", 0o644)

	for _, tc := range []struct {
		what, name, newName string
		want                error
		hint                string
	}{
		{"invalid name", "../etc", "", ErrInvalidName, ""},
		{"invalid new name", "fed", "a/b", ErrInvalidName, ""},
		{"no such image", "nope", "", ErrNotFound, "machinectl list-images"},
		{"nsbox's machine", "web", "", ErrExists, "an nsbox machine already"},
		{"raw", "disk", "", ErrInvalidOption, "raw disk image"},
		{"running", "runs", "", ErrRunning, "stop it first: nsbox stop runs"},
		{"vendor's", "vend", "", ErrInvalidOption, "adopts images in " + m.ImagesDir + " only"},
		{"no OS", "empty", "", ErrInvalidOption, "no os-release"},
		{"bad settings", "badset", "", nil, "its settings file"},
		{"name taken", "fed", "web", ErrExists, "choose another name"},
		{"name of another image", "fed", "runs", ErrExists, "machinectl's image"},
	} {
		err := m.Adopt(ctx, tc.name, tc.newName)
		if err == nil || tc.want != nil && !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.hint) {
			t.Errorf("%s: %v, want %v saying %q", tc.what, err, tc.want, tc.hint)
		}
	}
	imageUntouched(t, m, "refused adopts", "fed", fed)
	imageUntouched(t, m, "refused adopts", "runs", runs)
	imageUntouched(t, m, "refused adopts", "vend", vend)
	imageUntouched(t, m, "refused adopts", "badset", badset)
	if _, err := os.Stat(filepath.Join(m.ImagesDir, "disk.raw")); err != nil {
		t.Error(err)
	}
	if len(runner.ran) != 0 {
		t.Errorf("refused adopts ran %v", runner.ran)
	}

	// Locked by nspawn or machinectl (the lock beside the image).
	l, err := lockImage("", fed, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Adopt(ctx, "fed", ""); !errors.Is(err, ErrBusy) {
		t.Errorf("locked: %v", err)
	}
	l.Unlock()
	imageUntouched(t, m, "locked", "fed", fed)

	// Read-only (machinectl read-only).
	setImmutable(t, fed, true)
	err = m.Adopt(ctx, "fed", "")
	setImmutable(t, fed, false)
	if !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), "machinectl read-only fed false") {
		t.Errorf("read-only: %v", err)
	}
	imageUntouched(t, m, "read-only", "fed", fed)

	// Not root.
	m.Euid = 1000
	if err := m.Adopt(ctx, "fed", ""); !errors.Is(err, ErrNotRoot) {
		t.Errorf("not root: %v", err)
	}
	imageUntouched(t, m, "not root", "fed", fed)
}

// TestAdoptAcrossFileSystems adopts an image on another file system than
// the root directory (tmpfs against the test's directory): a copy, then
// the original's removal, and nothing left in the images directory.
func TestAdoptAcrossFileSystems(t *testing.T) {
	ctx := context.Background()
	m, _ := newTestManager(t, &fakeMachined{machines: map[string]dbusapi.Machine{}})
	m.Runner = host.ExecRunner{}
	images, err := os.MkdirTemp("/dev/shm", "nsbox-adopt-test-")
	if err != nil {
		t.Skip(err)
	}
	defer os.RemoveAll(images)
	var a, b unix.Stat_t
	if unix.Stat(images, &a) != nil || unix.Stat(m.RootDir, &b) != nil || a.Dev == b.Dev {
		t.Skip("/dev/shm is on the root directory's file system")
	}
	m.ImagesDir = images
	mkImage(t, images, "fed", "ID=fedora\n")
	if err := m.Adopt(ctx, "fed", ""); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(m.Tree("fed"), "usr", "bin", "hello")); err != nil || !strings.Contains(string(b), "hello") {
		t.Errorf("copy: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(m.Tree("fed"), "usr", "bin", "hello")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("the copy keeps modes: %v %v", fi, err)
	}
	ents, _ := os.ReadDir(images)
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if !reflect.DeepEqual(left, []string{"fed"}) {
		t.Errorf("images directory holds %v, want nsbox's link alone", left)
	}
	if cur, _ := os.Readlink(filepath.Join(images, "fed")); cur != m.Tree("fed") {
		t.Errorf("link %q", cur)
	}
	ents, _ = os.ReadDir(m.Store())
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".#") && !strings.HasSuffix(e.Name(), ".lck") {
			t.Errorf("staging tree left: %s", e.Name())
		}
	}
}
