package machine

import (
	"bytes"
	"io"
	"sync"
)

// propagateNoise is the line systemd-nspawn (252) prints on exit when
// /run is not a tmpfs, as on hosts not booted with systemd: it removes
// its /run/systemd/nspawn/propagate/NAME with rm_rf, which refuses to
// empty a directory on a disk file system and says so, then removes the
// (empty) directory anyway. Nothing is wrong and nothing is left.
func propagateNoise(name string) string {
	return `Attempted to remove disk file system under "/run/systemd/nspawn/propagate/` + name + `", and we can't allow that.`
}

// lineFilter passes what is written to w, except lines that are exactly
// drop. Only text that may still become that line is held back (so a
// prompt without a newline is shown at once); Flush writes what is held.
type lineFilter struct {
	mu   sync.Mutex
	w    io.Writer
	drop []byte
	held []byte // the start of the current line, a prefix of drop
	mid  bool   // the current line has started and is not drop
}

func newLineFilter(w io.Writer, drop string) *lineFilter {
	return &lineFilter{w: w, drop: []byte(drop)}
}

// Write implements io.Writer.
func (f *lineFilter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []byte
	for _, c := range p {
		switch {
		case f.mid:
			out = append(out, c)
			f.mid = c != '\n'
		case c == '\n' && bytes.Equal(f.held, f.drop):
			f.held = f.held[:0]
		case len(f.held) < len(f.drop) && f.drop[len(f.held)] == c:
			f.held = append(f.held, c)
		default:
			out = append(append(out, f.held...), c)
			f.held = f.held[:0]
			f.mid = c != '\n'
		}
	}
	if len(out) > 0 {
		if _, err := f.w.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Flush writes what is held back: a last line that began as drop.
func (f *lineFilter) Flush() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.held) == 0 {
		return nil
	}
	_, err := f.w.Write(f.held)
	f.held = f.held[:0]
	return err
}
