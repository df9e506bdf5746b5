package remote

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
)

// HeaderPrefix starts the one line the remote nsbox writes first, on its
// standard error, before anything else: "nsbox-remote/MIN-MAX VERSION".
// Its form never changes between protocol versions: it is how any nsbox
// learns what the other speaks.
const HeaderPrefix = "nsbox-remote/"

// Header is what the remote nsbox says of itself.
type Header struct {
	Min, Max int    // the protocol versions it speaks
	Version  string // its nsbox --version text
}

// FormatHeader is the header line the remote side writes.
func FormatHeader(h Header) string {
	return fmt.Sprintf("%s%d-%d %s\n", HeaderPrefix, h.Min, h.Max, strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, h.Version))
}

// ParseHeader reads a header line (without its line end); ok is false for
// any other line.
func ParseHeader(line string) (Header, bool) {
	rest, ok := strings.CutPrefix(line, HeaderPrefix)
	if !ok {
		return Header{}, false
	}
	rng, version, _ := strings.Cut(rest, " ")
	lo, hi, ok := strings.Cut(rng, "-")
	if !ok {
		return Header{}, false
	}
	min, err1 := strconv.Atoi(lo)
	max, err2 := strconv.Atoi(hi)
	if err1 != nil || err2 != nil || min < 0 || max < min {
		return Header{}, false
	}
	return Header{Min: min, Max: max, Version: version}, true
}

// Speaks reports whether the remote speaks protocol version v.
func (h Header) Speaks(v int) bool { return v >= h.Min && v <= h.Max }

// maxLine is how much of a line before the header the filter holds while
// it looks for the header; a longer line is not the header and goes on.
const maxLine = 4096

// Filter passes what it is written to out, less the header line, which it
// keeps: the header is the first line the remote nsbox writes, but ssh's
// own warnings and the remote shell's startup files may come before it.
// Until the header, text passes a line at a time (a line of maxLine bytes
// without its end is passed as it is); after it, bytes pass as they come.
// A line ending "\r\n" (through a remote terminal) is read as one ending
// "\n".
type Filter struct {
	out   io.Writer
	mu    sync.Mutex
	line  []byte
	found bool
	hdr   Header
}

// NewFilter returns a Filter writing to out.
func NewFilter(out io.Writer) *Filter { return &Filter{out: out} }

// Write implements io.Writer.
func (f *Filter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(p)
	if f.found {
		_, err := f.out.Write(p)
		return n, err
	}
	for len(p) > 0 {
		if f.found {
			if _, err := f.out.Write(p); err != nil {
				return n, err
			}
			return n, nil
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			f.line = append(f.line, p...)
			if len(f.line) >= maxLine {
				if _, err := f.out.Write(f.line); err != nil {
					return n, err
				}
				f.line = f.line[:0]
			}
			return n, nil
		}
		f.line = append(f.line, p[:i+1]...)
		p = p[i+1:]
		text := strings.TrimSuffix(strings.TrimSuffix(string(f.line), "\n"), "\r")
		if h, ok := ParseHeader(text); ok {
			f.found, f.hdr = true, h
		} else if _, err := f.out.Write(f.line); err != nil {
			return n, err
		}
		f.line = f.line[:0]
	}
	return n, nil
}

// Flush passes on a last line without its end.
func (f *Filter) Flush() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.line) == 0 {
		return nil
	}
	_, err := f.out.Write(f.line)
	f.line = f.line[:0]
	return err
}

// Header is the header seen, if one was.
func (f *Filter) Header() (Header, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hdr, f.found
}
