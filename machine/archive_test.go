package machine

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestArchiveChecker(t *testing.T) {
	for _, tc := range []struct {
		what    string
		members []tar.Header
		ok      bool
	}{
		{"an ordinary root", []tar.Header{
			{Name: "./", Typeflag: tar.TypeDir}, {Name: "./etc/", Typeflag: tar.TypeDir},
			{Name: "./etc/localtime", Typeflag: tar.TypeSymlink, Linkname: "/usr/share/zoneinfo/UTC"},
			{Name: "./bin", Typeflag: tar.TypeSymlink, Linkname: "usr/bin"},
			{Name: "./usr/bin/sh", Typeflag: tar.TypeReg}, {Name: "./usr/bin/dash", Typeflag: tar.TypeLink, Linkname: "./usr/bin/sh"},
			{Name: "dev/null", Typeflag: tar.TypeChar},
		}, true},
		{"absolute path", []tar.Header{{Name: "/etc/passwd", Typeflag: tar.TypeReg}}, false},
		{"dot-dot", []tar.Header{{Name: "./../../etc/passwd", Typeflag: tar.TypeReg}}, false},
		{"dot-dot inside", []tar.Header{{Name: "usr/../../x", Typeflag: tar.TypeReg}}, false},
		{"write through an archive symlink", []tar.Header{
			{Name: "x", Typeflag: tar.TypeSymlink, Linkname: "/etc"}, {Name: "x/passwd", Typeflag: tar.TypeReg}}, false},
		{"write through a relative symlink", []tar.Header{
			{Name: "a/b", Typeflag: tar.TypeSymlink, Linkname: "../../.."}, {Name: "a/b/c/d", Typeflag: tar.TypeReg}}, false},
		{"replace a symlink with a directory", []tar.Header{
			{Name: "x", Typeflag: tar.TypeSymlink, Linkname: "/etc"}, {Name: "x/", Typeflag: tar.TypeDir}}, false},
		{"hard link out", []tar.Header{{Name: "x", Typeflag: tar.TypeLink, Linkname: "/etc/shadow"}}, false},
		{"hard link through a symlink", []tar.Header{
			{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/etc"}, {Name: "x", Typeflag: tar.TypeLink, Linkname: "l/shadow"}}, false},
	} {
		var c ArchiveChecker
		var err error
		for i := range tc.members {
			if err = c.Check(&tc.members[i]); err != nil {
				break
			}
		}
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.what, err)
		}
		if err != nil && !errors.Is(err, ErrUnsafeArchive) {
			t.Errorf("%s: %v is not ErrUnsafeArchive", tc.what, err)
		}
	}
}

func writeTar(t *testing.T, gz bool, members ...tar.Header) string {
	t.Helper()
	var buf bytes.Buffer
	var w *tar.Writer
	var z *gzip.Writer
	if gz {
		z = gzip.NewWriter(&buf)
		w = tar.NewWriter(z)
	} else {
		w = tar.NewWriter(&buf)
	}
	for _, h := range members {
		h.Mode = 0o644
		w.WriteHeader(&h)
	}
	w.Close()
	if z != nil {
		z.Close()
	}
	p := filepath.Join(t.TempDir(), "a.tar")
	os.WriteFile(p, buf.Bytes(), 0o644)
	return p
}

func TestCheckArchiveFile(t *testing.T) {
	good := writeTar(t, true, tar.Header{Name: "etc/", Typeflag: tar.TypeDir}, tar.Header{Name: "etc/os-release", Typeflag: tar.TypeReg})
	if err := CheckArchive(good); err != nil {
		t.Errorf("good gzip archive: %v", err)
	}
	bad := writeTar(t, false, tar.Header{Name: "x", Typeflag: tar.TypeSymlink, Linkname: "/"}, tar.Header{Name: "x/etc/evil", Typeflag: tar.TypeReg})
	if err := CheckArchive(bad); !errors.Is(err, ErrUnsafeArchive) {
		t.Errorf("bad archive: %v", err)
	}
	notTar := filepath.Join(t.TempDir(), "x")
	os.WriteFile(notTar, []byte(strings.Repeat("garbage", 200)), 0o644)
	if err := CheckArchive(notTar); err == nil {
		t.Error("garbage accepted")
	}
}

func FuzzArchiveChecker(f *testing.F) {
	f.Add("etc/passwd", "", byte(tar.TypeReg), "x", "/etc", byte(tar.TypeSymlink))
	f.Add("x", "/etc", byte(tar.TypeSymlink), "x/passwd", "", byte(tar.TypeReg))
	f.Add("../a", "", byte(tar.TypeReg), "b", "../a", byte(tar.TypeLink))
	f.Fuzz(func(t *testing.T, n1, l1 string, t1 byte, n2, l2 string, t2 byte) {
		var c ArchiveChecker
		hs := []tar.Header{{Name: n1, Linkname: l1, Typeflag: t1}, {Name: n2, Linkname: l2, Typeflag: t2}}
		links := map[string]bool{}
		for _, h := range hs {
			if c.Check(&h) != nil {
				return
			}
			// Whatever passed stays inside the root and not under a link.
			p := filepath.Clean("/root/" + h.Name)
			if !strings.HasPrefix(p+"/", "/root/") || strings.HasPrefix(h.Name, "/") {
				t.Fatalf("accepted %q", h.Name)
			}
			for d := filepath.Dir(p); d != "/root" && d != "/"; d = filepath.Dir(d) {
				if links[d] {
					t.Fatalf("accepted %q through link %q", h.Name, d)
				}
			}
			if h.Typeflag == tar.TypeSymlink {
				links[p] = true
			}
		}
	})
}
