package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/machine/image/imagetest"
)

func TestArchiveChecker(t *testing.T) {
	for _, tc := range []struct {
		what    string
		members []tar.Header
		ok      bool
		kept    []string // names given to GNU tar, when ok
	}{
		{"an ordinary root", []tar.Header{
			{Name: "./", Typeflag: tar.TypeDir}, {Name: "./etc/", Typeflag: tar.TypeDir},
			{Name: "./etc/localtime", Typeflag: tar.TypeSymlink, Linkname: "/usr/share/zoneinfo/UTC"},
			{Name: "./bin", Typeflag: tar.TypeSymlink, Linkname: "usr/bin"},
			{Name: "./usr/bin/sh", Typeflag: tar.TypeReg, Size: 10}, {Name: "./usr/bin/dash", Typeflag: tar.TypeLink, Linkname: "./usr/bin/sh"},
			{Name: "run/initctl", Typeflag: tar.TypeFifo},
		}, true, []string{"./", "etc/", "etc/localtime", "bin", "usr/bin/sh", "usr/bin/dash", "run/initctl"}},
		{"device nodes are left out, in dev/ and elsewhere, and links to them", []tar.Header{
			{Name: "dev/", Typeflag: tar.TypeDir}, {Name: "dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3},
			{Name: "usr/sda", Typeflag: tar.TypeBlock, Devmajor: 8}, {Name: "usr/mem", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 1},
			{Name: "usr/null2", Typeflag: tar.TypeLink, Linkname: "dev/null"},
			{Name: "usr/sda", Typeflag: tar.TypeReg}, {Name: "usr/again", Typeflag: tar.TypeLink, Linkname: "usr/sda"},
		}, true, []string{"dev/", "usr/sda", "usr/again"}},
		{"absolute path", []tar.Header{{Name: "/etc/passwd", Typeflag: tar.TypeReg}}, false, nil},
		{"dot-dot", []tar.Header{{Name: "./../../etc/passwd", Typeflag: tar.TypeReg}}, false, nil},
		{"dot-dot inside", []tar.Header{{Name: "usr/../../x", Typeflag: tar.TypeReg}}, false, nil},
		{"no name", []tar.Header{{Name: "", Typeflag: tar.TypeReg}}, false, nil},
		{"write through an archive symlink", []tar.Header{
			{Name: "x", Typeflag: tar.TypeSymlink, Linkname: "/etc"}, {Name: "x/passwd", Typeflag: tar.TypeReg}}, false, nil},
		{"write through a relative symlink", []tar.Header{
			{Name: "a/b", Typeflag: tar.TypeSymlink, Linkname: "../../.."}, {Name: "a/b/c/d", Typeflag: tar.TypeReg}}, false, nil},
		{"a device through a symlink", []tar.Header{
			{Name: "x", Typeflag: tar.TypeSymlink, Linkname: "/dev"}, {Name: "x/sda", Typeflag: tar.TypeBlock}}, false, nil},
		{"replace a symlink with a directory", []tar.Header{
			{Name: "x", Typeflag: tar.TypeSymlink, Linkname: "/etc"}, {Name: "x/", Typeflag: tar.TypeDir}}, false, nil},
		{"hard link out", []tar.Header{{Name: "x", Typeflag: tar.TypeLink, Linkname: "/etc/shadow"}}, false, nil},
		{"hard link through a symlink", []tar.Header{
			{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/etc"}, {Name: "x", Typeflag: tar.TypeLink, Linkname: "l/shadow"}}, false, nil},
		{"hard link to a symlink", []tar.Header{
			{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}, {Name: "x", Typeflag: tar.TypeLink, Linkname: "l"}}, false, nil},
		{"the root a symlink", []tar.Header{{Name: "./", Typeflag: tar.TypeSymlink, Linkname: "/"}}, false, nil},
		// GNU tar makes a directory of "x/" and reads its data as headers.
		{"a file named like a directory", []tar.Header{{Name: "x/", Typeflag: tar.TypeReg, Size: 512}}, false, nil},
		{"a directory with data", []tar.Header{{Name: "x/", Typeflag: tar.TypeDir, Size: 512}}, false, nil},
		{"a symlink with data", []tar.Header{{Name: "x", Typeflag: tar.TypeSymlink, Linkname: "y", Size: 1}}, false, nil},
		{"old GNU sparse file", []tar.Header{{Name: "x", Typeflag: tar.TypeGNUSparse, Size: 1}}, false, nil},
		{"GNU volume label", []tar.Header{{Name: "vol", Typeflag: 'V'}}, false, nil},
		{"GNU multi-volume continuation", []tar.Header{{Name: "x", Typeflag: 'M', Size: 1}}, false, nil},
		{"GNU old long names", []tar.Header{{Name: "x", Typeflag: 'N', Size: 1}}, false, nil},
		{"GNU dump directory", []tar.Header{{Name: "x", Typeflag: 'D'}}, false, nil},
		{"Solaris extended header", []tar.Header{{Name: "x", Typeflag: 'X', Size: 30}}, false, nil},
		{"contiguous file", []tar.Header{{Name: "x", Typeflag: tar.TypeCont}}, false, nil},
		{"vendor type", []tar.Header{{Name: "x", Typeflag: 'A'}}, false, nil},
		{"GNU.sparse.name", []tar.Header{{Name: "harmless", Typeflag: tar.TypeReg, PAXRecords: map[string]string{"GNU.sparse.name": "x/passwd"}}}, false, nil},
		{"GNU.dumpdir", []tar.Header{{Name: "d/", Typeflag: tar.TypeDir, PAXRecords: map[string]string{"GNU.dumpdir": "Yx\x00"}}}, false, nil},
		{"a long name and a PAX path that disagree", []tar.Header{{Name: "harmless", Typeflag: tar.TypeReg, PAXRecords: map[string]string{"path": "x/passwd"}}}, false, nil},
		{"an empty PAX path", []tar.Header{{Name: "harmless", Typeflag: tar.TypeReg, PAXRecords: map[string]string{"path": ""}}}, false, nil},
		{"a PAX linkpath that disagrees", []tar.Header{{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "y", PAXRecords: map[string]string{"linkpath": "/etc"}}}, false, nil},
		{"a PAX path that agrees", []tar.Header{{Name: "long/name", Typeflag: tar.TypeReg, PAXRecords: map[string]string{"path": "long/name"}}}, true, []string{"long/name"}},
		{"a global header with a comment", []tar.Header{
			{Name: "pax_global_header", Typeflag: tar.TypeXGlobalHeader, PAXRecords: map[string]string{"comment": "52bc1f1"}}, {Name: "a", Typeflag: tar.TypeReg}}, true, []string{"a"}},
		{"a global header that renames every member", []tar.Header{
			{Name: "pax_global_header", Typeflag: tar.TypeXGlobalHeader, PAXRecords: map[string]string{"path": "x/passwd"}}}, false, nil},
		{"an owner out of range", []tar.Header{{Name: "a", Typeflag: tar.TypeReg, Uid: -1}}, false, nil},
	} {
		var c ArchiveChecker
		var err error
		var kept []string
		for i := range tc.members {
			var out *tar.Header
			if out, err = c.Check(&tc.members[i]); err != nil {
				break
			}
			if out != nil {
				kept = append(kept, out.Name)
			}
		}
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.what, err)
		}
		if err != nil && !errors.Is(err, ErrUnsafeArchive) {
			t.Errorf("%s: %v is not ErrUnsafeArchive", tc.what, err)
		}
		if tc.ok && !reflect.DeepEqual(kept, tc.kept) {
			t.Errorf("%s: GNU tar gets %q, want %q", tc.what, kept, tc.kept)
		}
	}
}

func TestArchiveCheckerDropsTrustedXattrs(t *testing.T) {
	var c ArchiveChecker
	out, err := c.Check(&tar.Header{Name: "f", Typeflag: tar.TypeReg, PAXRecords: map[string]string{
		"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
		"SCHILY.xattr.user.x": "1", "SCHILY.acl.access": "user::rw-", "SCHILY.dev": "2049", "comment": "hi", "mtime": "1.5",
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02", "SCHILY.xattr.user.x": "1", "SCHILY.acl.access": "user::rw-"}
	if !reflect.DeepEqual(out.PAXRecords, want) || c.Xattrs != 1 {
		t.Errorf("records given to GNU tar: %q (%d dropped)", out.PAXRecords, c.Xattrs)
	}
}

func TestArchiveCheckerSpace(t *testing.T) {
	s := &Space{Dir: "/srv", Bytes: 10 << 10, Reserve: 1 << 30, Block: 4096}
	c := ArchiveChecker{Space: s}
	// 1 byte takes a block: 4 KiB for "a", 4 KiB for the directory.
	for _, h := range []tar.Header{{Name: "d/", Typeflag: tar.TypeDir}, {Name: "d/a", Typeflag: tar.TypeReg, Size: 1}, {Name: "d/l", Typeflag: tar.TypeLink, Linkname: "d/a"}} {
		if _, err := c.Check(&h); err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
	}
	if c.Need != 8192 || c.Inodes != 2 {
		t.Errorf("counted %d bytes, %d inodes", c.Need, c.Inodes)
	}
	_, err := c.Check(&tar.Header{Name: "d/b", Typeflag: tar.TypeReg, Size: 4097})
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "archive needs 16.4 kB, only 10.2 kB free on /srv (1.1 GB kept in reserve)") {
		t.Errorf("over the cap: %v", err)
	}
	c = ArchiveChecker{Space: &Space{Dir: "/srv", Bytes: 1 << 40, Inodes: 1}}
	c.Check(&tar.Header{Name: "a", Typeflag: tar.TypeFifo})
	if _, err := c.Check(&tar.Header{Name: "b", Typeflag: tar.TypeFifo}); !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "2 inodes, only 1 free") {
		t.Errorf("out of inodes: %v", err)
	}
}

// copied runs copyArchive on an archive and returns the names in what it
// gives GNU tar.
func copied(t *testing.T, archive []byte, c *ArchiveChecker) ([]string, error) {
	t.Helper()
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := copyArchive(bytes.NewReader(archive), pw, c, func(error) { pw.Close() })
		pw.CloseWithError(err)
		errc <- err
	}()
	var names []string
	tr := tar.NewReader(pr)
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
	}
	io.Copy(io.Discard, pr)
	return names, <-errc
}

func TestCopyArchive(t *testing.T) {
	var sparse0 imagetest.RawTar // the sparse header Go ignores (no map) and GNU tar honours
	sparse0.Pax("GNU.sparse.name", "etc/passwd")
	sparse0.Header("harmless", tar.TypeReg, "x", false)
	var sparseS imagetest.RawTar
	sparseS.Header("x", tar.TypeGNUSparse, "", true)
	var longName imagetest.RawTar // GNU tar takes the PAX path, Go the long name
	longName.Pax("path", "x/passwd")
	longName.Header("././@LongLink", tar.TypeGNULongName, "harmless\x00", true)
	longName.Header("harmless", tar.TypeReg, "", true)
	var solaris imagetest.RawTar // GNU tar reads 'X' as a PAX header, Go as a file
	solaris.Header("x", 'X', "19 path=etc/passwd\n", false)
	solaris.Header("harmless", tar.TypeReg, "", false)
	var global imagetest.RawTar
	global.Records(tar.TypeXGlobalHeader, "path", "etc/passwd")
	global.Header("harmless", tar.TypeReg, "", false)

	for _, tc := range []struct {
		what    string
		archive []byte
		want    []string
		err     error
	}{
		{"GNU.sparse.name without a map", sparse0.End(), nil, ErrUnsafeArchive},
		{"old GNU sparse", sparseS.End(), nil, ErrUnsafeArchive},
		{"a GNU long name and a PAX path", longName.End(), nil, ErrUnsafeArchive},
		{"a Solaris extended header", solaris.End(), nil, ErrUnsafeArchive},
		{"a global header with a path", global.End(), nil, ErrUnsafeArchive},
		// Re-encoded, GNU tar reads what Go read: no smuggled members.
		{"a size field GNU tar reads as 0", imagetest.Smuggling(t), []string{"etc/", "etc/os-release", "carrier"}, nil},
		{"a PAX key with a blank", imagetest.Keyword(t), []string{"etc/", "etc/os-release", "harmless"}, nil},
	} {
		got, err := copied(t, tc.archive, &ArchiveChecker{})
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("%s: %v, want %v", tc.what, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: GNU tar gets %q (%v), want %q", tc.what, got, err, tc.want)
		}
	}
}

func TestCopyArchiveStopsAtTheCap(t *testing.T) {
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	for i := range 4 {
		w.WriteHeader(&tar.Header{Name: fmt.Sprint("f", i), Typeflag: tar.TypeReg, Size: 5000, Mode: 0o644})
		w.Write(make([]byte, 5000))
	}
	w.Close()
	c := &ArchiveChecker{Space: &Space{Dir: "/srv", Bytes: 10000, Block: 1000}}
	got, err := copied(t, buf.Bytes(), c)
	// Two files fit; GNU tar gets nothing after them, and the error counts
	// the whole archive.
	if !reflect.DeepEqual(got, []string{"f0", "f1"}) || !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "archive needs 20.0 kB, only 10.0 kB free on /srv") {
		t.Errorf("GNU tar gets %q; %v", got, err)
	}
}

func TestCopyArchiveRefusesGarbage(t *testing.T) {
	for what, b := range map[string][]byte{
		"garbage":   []byte(strings.Repeat("garbage", 200)),
		"empty":     make([]byte, 1024),
		"truncated": imagetest.Smuggling(t)[:512*5],
	} {
		if _, err := copied(t, b, &ArchiveChecker{}); err == nil {
			t.Errorf("%s accepted", what)
		}
	}
}

func FuzzArchiveChecker(f *testing.F) {
	f.Add("etc/passwd", "", byte(tar.TypeReg), "x", "/etc", byte(tar.TypeSymlink))
	f.Add("x", "/etc", byte(tar.TypeSymlink), "x/passwd", "", byte(tar.TypeReg))
	f.Add("../a", "", byte(tar.TypeReg), "b", "../a", byte(tar.TypeLink))
	f.Add("dev/null", "", byte(tar.TypeChar), "usr/null", "dev/null", byte(tar.TypeLink))
	f.Add("x/", "", byte(tar.TypeReg), "x/y", "", byte(tar.TypeGNUSparse))
	f.Fuzz(func(t *testing.T, n1, l1 string, t1 byte, n2, l2 string, t2 byte) {
		var c ArchiveChecker
		hs := []tar.Header{{Name: n1, Linkname: l1, Typeflag: t1}, {Name: n2, Linkname: l2, Typeflag: t2}}
		links := map[string]bool{}
		for _, h := range hs {
			out, err := c.Check(&h)
			if err != nil {
				return
			}
			if out == nil {
				continue
			}
			// Whatever GNU tar gets stays inside the root, not under a
			// link, and is of a type nsbox imports.
			for _, name := range []string{h.Name, out.Name} {
				p := filepath.Clean("/root/" + name)
				if !strings.HasPrefix(p+"/", "/root/") || strings.HasPrefix(name, "/") {
					t.Fatalf("accepted %q", name)
				}
				for d := filepath.Dir(p); d != "/root" && d != "/"; d = filepath.Dir(d) {
					if links[d] {
						t.Fatalf("accepted %q through link %q", name, d)
					}
				}
			}
			if filepath.Clean(h.Name) != filepath.Clean(out.Name) {
				t.Fatalf("%q given to GNU tar as %q", h.Name, out.Name)
			}
			switch out.Typeflag {
			case tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeFifo:
			case tar.TypeLink:
				if l := filepath.Clean("/root/" + out.Linkname); !strings.HasPrefix(l+"/", "/root/") || links[l] {
					t.Fatalf("hard link %q to %q", out.Name, out.Linkname)
				}
			default:
				t.Fatalf("%q of type %q given to GNU tar", out.Name, out.Typeflag)
			}
			if out.Typeflag == tar.TypeSymlink {
				links[filepath.Clean("/root/"+out.Name)] = true
			}
		}
	})
}

// What copyArchive gives GNU tar passes the checker again, unchanged: the
// re-encoding makes nothing the check would refuse.
func FuzzCopyArchive(f *testing.F) {
	var root bytes.Buffer
	w := tar.NewWriter(&root)
	for _, h := range []tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "usr/bin/su", Typeflag: tar.TypeReg, Mode: 0o4755},
		{Name: "usr/bin/su2", Typeflag: tar.TypeLink, Linkname: "usr/bin/su"},
		{Name: "bin", Typeflag: tar.TypeSymlink, Linkname: "usr/bin"},
		{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3},
	} {
		w.WriteHeader(&h)
	}
	w.Close()
	f.Add(root.Bytes())
	f.Add(imagetest.Smuggling(f))
	f.Add(imagetest.Keyword(f))
	f.Fuzz(func(t *testing.T, archive []byte) {
		pr, pw := io.Pipe()
		errc := make(chan error, 1)
		go func() {
			err := copyArchive(bytes.NewReader(archive), pw, &ArchiveChecker{}, func(error) { pw.Close() })
			pw.CloseWithError(err)
			errc <- err
		}()
		var again ArchiveChecker
		tr := tar.NewReader(pr)
		for {
			h, err := tr.Next()
			if err != nil {
				break
			}
			out, err := again.Check(h)
			if err != nil || out == nil || out.Name != h.Name || out.Linkname != h.Linkname || out.Typeflag != h.Typeflag || out.Size != h.Size {
				t.Fatalf("%q given to GNU tar, checked again: %+v %v", h.Name, out, err)
			}
		}
		io.Copy(io.Discard, pr)
		<-errc
	})
}
