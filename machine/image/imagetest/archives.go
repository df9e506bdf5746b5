package imagetest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"strings"
	"testing"
)

// RawTar builds archives byte by byte, for headers Go's writer will not
// make.
type RawTar struct{ bytes.Buffer }

// Header adds a ustar header block (magic "ustar\x0000", or GNU's
// "ustar  \x00" when gnu is set) and data, padded to whole blocks.
func (r *RawTar) Header(name string, typeflag byte, data string, gnu bool) []byte {
	b := make([]byte, 512)
	copy(b[0:100], name)
	copy(b[100:], "0000644\x00")
	copy(b[108:], "0000000\x00")
	copy(b[116:], "0000000\x00")
	copy(b[124:], fmt.Sprintf("%011o\x00", len(data)))
	copy(b[136:], "00000000000\x00")
	b[156] = typeflag
	copy(b[257:], "ustar\x0000")
	if gnu {
		copy(b[257:], "ustar  \x00")
	}
	Checksum(b)
	r.Write(b)
	r.Data(data)
	return r.Bytes()[r.Len()-512-padded(len(data)) : r.Len()-padded(len(data))]
}

func padded(n int) int { return (n + 511) / 512 * 512 }

func (r *RawTar) Data(d string) {
	r.WriteString(d)
	r.Write(make([]byte, padded(len(d))-len(d)))
}

// Pax adds an 'x' header with records in order, keys and values as given.
func (r *RawTar) Pax(kv ...string) { r.Records(tar.TypeXHeader, kv...) }

// Records adds a PAX header of type typeflag ('x' or 'g').
func (r *RawTar) Records(typeflag byte, kv ...string) {
	var d strings.Builder
	for i := 0; i < len(kv); i += 2 {
		rec := " " + kv[i] + "=" + kv[i+1] + "\n"
		n := len(rec) + 1
		for len(fmt.Sprint(n))+len(rec) != n {
			n++
		}
		fmt.Fprintf(&d, "%d%s", n, rec)
	}
	r.Header("PaxHeaders/x", typeflag, d.String(), false)
}

func (r *RawTar) End() []byte {
	r.Write(make([]byte, 1024))
	return r.Bytes()
}

func Checksum(b []byte) {
	copy(b[148:156], "        ")
	s := 0
	for _, c := range b[:512] {
		s += int(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", s))
}

// Smuggling is an archive that GNU tar reads otherwise than Go's reader:
// its member "carrier" has the size field "\x00\x00" and octal digits.
// Go trims the NULs and reads a file of three blocks; GNU tar skips one NUL, stops
// at the second, reads size 0 and takes the file's data for headers: a
// block device "usr/disk" and a file "etc/smuggled" that Go never sees.
func Smuggling(t testing.TB) []byte {
	t.Helper()
	var inner bytes.Buffer
	iw := tar.NewWriter(&inner)
	iw.WriteHeader(&tar.Header{Name: "usr/disk", Typeflag: tar.TypeBlock, Devmajor: 8, Mode: 0o666})
	iw.WriteHeader(&tar.Header{Name: "etc/smuggled", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644})
	iw.Write([]byte("!"))
	iw.Flush()
	var r RawTar
	r.Header("etc/", tar.TypeDir, "", false)
	r.Header("etc/os-release", tar.TypeReg, "ID=debian\n", false)
	blk := r.Header("carrier", tar.TypeReg, inner.String(), false)
	copy(blk[124:136], fmt.Sprintf("\x00\x00%09o\x00", inner.Len()))
	Checksum(blk)
	return r.End()
}

// Keyword is an archive with a PAX record whose key starts with a blank:
// Go keeps the key " path" and ignores it, GNU tar skips the blank and
// names the file "etc/hidden".
func Keyword(t testing.TB) []byte {
	var r RawTar
	r.Header("etc/", tar.TypeDir, "", false)
	r.Header("etc/os-release", tar.TypeReg, "ID=debian\n", false)
	r.Pax(" path", "etc/hidden")
	r.Header("harmless", tar.TypeReg, "x", false)
	return r.End()
}

// RootArchive is a small root file system as docker export writes one,
// with the device nodes such an export has, one outside /dev, a FIFO, a
// setuid file with a hard link, and extended attributes.
func RootArchive(t testing.TB, gz bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	var z *gzip.Writer
	var w *tar.Writer
	if gz {
		z = gzip.NewWriter(&buf)
		w = tar.NewWriter(z)
	} else {
		w = tar.NewWriter(&buf)
	}
	for _, h := range []tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/os-release", Typeflag: tar.TypeReg, Mode: 0o644, Size: 10,
			PAXRecords: map[string]string{"SCHILY.xattr.user.nsbox": "kept", "SCHILY.xattr.trusted.overlay.redirect": "/etc"}},
		{Name: "usr/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "usr/bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "usr/bin/su", Typeflag: tar.TypeReg, Mode: 0o4755, Size: 10},
		{Name: "usr/bin/su2", Typeflag: tar.TypeLink, Linkname: "usr/bin/su"},
		{Name: "bin", Typeflag: tar.TypeSymlink, Linkname: "usr/bin"},
		{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3},
		{Name: "usr/sda", Typeflag: tar.TypeBlock, Mode: 0o666, Devmajor: 8},
		{Name: "run/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "run/initctl", Typeflag: tar.TypeFifo, Mode: 0o600},
	} {
		if err := w.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			w.Write([]byte("ID=debian\n"))
		}
	}
	w.Close()
	if z != nil {
		z.Close()
	}
	return buf.Bytes()
}
