package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/image/imagetest"
)

// layerBlob writes a gzipped layer of members to a file and returns it
// open, with its digest.
func layerBlob(t *testing.T, members []tar.Header) (*os.File, string) {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	w := tar.NewWriter(gz)
	for _, h := range members {
		h := h
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		data := ""
		if h.Typeflag == tar.TypeReg && h.Size == 0 && h.Linkname != "" {
			data, h.Linkname = h.Linkname, "" // content given as Linkname
			h.Size = int64(len(data))
		}
		if err := w.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if data == "" {
				data = strings.Repeat("x", int(h.Size))
			}
			w.Write([]byte(data))
		}
	}
	w.Close()
	gz.Close()
	p := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	sum := sha256.Sum256(buf.Bytes())
	return f, "sha256:" + hex.EncodeToString(sum[:])
}

// treeOf lists a tree: path, then "/" for a directory, "->T" for a link,
// "=CONTENT" for a file.
func treeOf(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case fi.IsDir():
			rel += "/"
		case fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			rel += "->" + l
		default:
			b, _ := os.ReadFile(p)
			rel += "=" + string(b)
		}
		out = append(out, rel)
		return nil
	})
	sort.Strings(out)
	return out
}

func dir(n string) tar.Header { return tar.Header{Name: n, Typeflag: tar.TypeDir} }
func file(n, content string) tar.Header {
	return tar.Header{Name: n, Typeflag: tar.TypeReg, Linkname: content}
}
func symlink(n, target string) tar.Header {
	return tar.Header{Name: n, Typeflag: tar.TypeSymlink, Linkname: target}
}
func hardlink(n, target string) tar.Header {
	return tar.Header{Name: n, Typeflag: tar.TypeLink, Linkname: target}
}

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("GNU tar keeps owners as root only")
	}
}

func TestLayersApplyInOrderWithWhiteouts(t *testing.T) {
	requireRoot(t)
	layers := [][]tar.Header{
		{dir("etc/"), file("etc/os-release", "ID=test"), file("etc/gone", "1"), dir("var/"), dir("var/cache/"),
			file("var/cache/a", "a"), dir("var/cache/sub/"), file("var/cache/sub/b", "b"),
			symlink("bin", "usr/bin"), dir("usr/"), dir("usr/bin/"), file("usr/bin/sh", "sh"),
			symlink("lnk", "/etc"), file("over", "old"), dir("dir2file/"), file("dir2file/x", "x"),
			{Name: "dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}},
		{file("etc/.wh.gone", ""), file("var/cache/.wh..wh..opq", ""), file("var/cache/new", "new"),
			file("over", "new"), file(".wh.lnk", ""), dir("lnk/"), file("lnk/inside", "in"),
			file("dir2file", "now a file"), symlink("bin", "usr/sbin"), hardlink("usr/bin/dash", "usr/bin/sh")},
		{file(".wh.bin", ""), dir("bin/"), file("bin/ls", "ls")},
	}
	d := filepath.Join(t.TempDir(), "tree")
	os.Mkdir(d, 0o755)
	l := &Layers{Runner: host.ExecRunner{}, Dir: d}
	for i, members := range layers {
		f, digest := layerBlob(t, members)
		if err := l.Apply(context.Background(), f, digest); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
	}
	want := []string{"bin/", "bin/ls=ls", "dir2file=now a file", "etc/", "etc/os-release=ID=test", "lnk/", "lnk/inside=in",
		"over=new", "usr/", "usr/bin/", "usr/bin/dash=sh", "usr/bin/sh=sh", "var/", "var/cache/", "var/cache/new=new"}
	if got := treeOf(t, d); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("tree:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if l.Whiteouts != 4 || l.Checker.Devices != 1 {
		t.Errorf("whiteouts %d, devices %d", l.Whiteouts, l.Checker.Devices)
	}
}

func TestLayersRefuseHostileLayers(t *testing.T) {
	requireRoot(t)
	victim := imagetest.Victim(t)
	outside := filepath.Dir(victim)
	for _, tc := range []struct {
		what   string
		layers [][]tar.Header
		want   string
	}{
		{"a member with ..", [][]tar.Header{{file("../x", "x")}}, ".. component"},
		{"an absolute member", [][]tar.Header{{file("/etc/x", "x")}}, "absolute path"},
		{"a whiteout with ..", [][]tar.Header{{file("a/../../.wh.shadow", "")}}, ".. component"},
		{"a whiteout of ..", [][]tar.Header{{dir("a/"), file("a/.wh...", "")}}, "names no file"},
		{"a whiteout through an earlier link", [][]tar.Header{{symlink("l", outside)}, {file("l/.wh.shadow", "")}}, "through the symbolic link"},
		{"an opaque marker through an earlier link", [][]tar.Header{{symlink("l", outside)}, {file("l/.wh..wh..opq", "")}}, "through the symbolic link"},
		{"a write through a link of the layer before", [][]tar.Header{{symlink("l", outside)}, {file("l/shadow", "pwned")}}, "through the symbolic link"},
		{"a write through a link of the same layer", [][]tar.Header{{symlink("l", outside), file("l/shadow", "pwned")}}, "through the symbolic link"},
		{"a hard link to outside", [][]tar.Header{{hardlink("x", victim)}}, "absolute path"},
		{"a hard link through an earlier link", [][]tar.Header{{symlink("l", outside)}, {hardlink("x", "l/shadow")}}, "through the symbolic link"},
		{"a hard link to an earlier link", [][]tar.Header{{symlink("l", victim)}, {hardlink("x", "l")}}, "to a symbolic link"},
		{"a member inside a whiteout", [][]tar.Header{{file(".wh.x/y", "")}}, "inside the whiteout"},
		{"a layer over the cap", [][]tar.Header{{file("a", strings.Repeat("a", 5000))}, {file("b", strings.Repeat("b", 9000))}}, "cap on an image"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			d := filepath.Join(t.TempDir(), "tree")
			os.Mkdir(d, 0o755)
			l := &Layers{Runner: host.ExecRunner{}, Dir: d, Checker: ArchiveChecker{Cap: 12 << 10}}
			var err error
			for _, members := range tc.layers {
				f, digest := layerBlob(t, members)
				if err = l.Apply(context.Background(), f, digest); err != nil {
					break
				}
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("got %v, want one line with %q", err, tc.want)
			}
			imagetest.Untouched(t, victim)
			if ents, _ := os.ReadDir(outside); len(ents) != 1 {
				t.Errorf("%s now holds %d entries", outside, len(ents))
			}
		})
	}
}

func TestLayersRefuseAWrongDigest(t *testing.T) {
	d := t.TempDir()
	f, _ := layerBlob(t, []tar.Header{file("a", "a")})
	l := &Layers{Runner: host.ExecRunner{}, Dir: d}
	err := l.Apply(context.Background(), f, "sha256:"+strings.Repeat("0", 64))
	if !errors.Is(err, ErrDigest) {
		t.Fatalf("got %v", err)
	}
	if ents, _ := os.ReadDir(d); len(ents) != 0 {
		t.Errorf("tree written: %v", ents)
	}
}
