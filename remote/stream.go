package remote

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
)

// SendProtocol is the remote protocol version that has "receive": the
// version nsbox send asks for. Protocol 2 is protocol 1 and that command.
const SendProtocol = 2

// The stream of nsbox send, on the standard input of the remote
// "nsbox receive": the data (a zstd tar) in frames, each a 4-byte
// big-endian length (1 to MaxFrame) and that many bytes; then a frame of
// length 0 and the 32-byte SHA-256 of all the data bytes. A stream cut
// anywhere before its sum is never taken for a whole one.
const MaxFrame = 1 << 20

// ErrStream is a stream that is not a whole, well-formed one.
var ErrStream = errors.New("transfer stream")

// ErrChecksum is a stream whose data does not have the sum it ends with.
var ErrChecksum = errors.New("transfer stream checksum mismatch")

// FrameWriter writes data as frames, counting and summing it; Close
// writes the end frame and the sum.
type FrameWriter struct {
	w     io.Writer
	sum   hash.Hash
	bytes int64
}

// NewFrameWriter returns a FrameWriter writing to w.
func NewFrameWriter(w io.Writer) *FrameWriter {
	return &FrameWriter{w: w, sum: sha256.New()}
}

// Write implements io.Writer.
func (f *FrameWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), MaxFrame)]
		var hdr [4]byte
		binary.BigEndian.PutUint32(hdr[:], uint32(len(chunk)))
		if _, err := f.w.Write(hdr[:]); err != nil {
			return n, err
		}
		if _, err := f.w.Write(chunk); err != nil {
			return n, err
		}
		f.sum.Write(chunk)
		f.bytes += int64(len(chunk))
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// Bytes is how many data bytes were written.
func (f *FrameWriter) Bytes() int64 { return f.bytes }

// Sum is the hex SHA-256 of the data written so far.
func (f *FrameWriter) Sum() string { return hex.EncodeToString(f.sum.Sum(nil)) }

// Close ends the stream: the end frame and the sum.
func (f *FrameWriter) Close() error {
	var end [4 + sha256.Size]byte
	copy(end[4:], f.sum.Sum(nil))
	_, err := f.w.Write(end[:])
	return err
}

// FrameReader reads the data of a framed stream. It returns io.EOF only
// after the end frame and a sum that matches; a stream cut short is
// io.ErrUnexpectedEOF, a bad frame ErrStream, a wrong sum ErrChecksum.
type FrameReader struct {
	r     *bufio.Reader
	left  int // bytes left in the current frame
	sum   hash.Hash
	bytes int64
	err   error
}

// NewFrameReader returns a FrameReader reading from r.
func NewFrameReader(r io.Reader) *FrameReader {
	return &FrameReader{r: bufio.NewReaderSize(r, 64<<10), sum: sha256.New()}
}

// Read implements io.Reader.
func (f *FrameReader) Read(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for f.left == 0 {
		var hdr [4]byte
		if _, err := io.ReadFull(f.r, hdr[:]); err != nil {
			return 0, f.fail(cut(err))
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n == 0 {
			var want [sha256.Size]byte
			if _, err := io.ReadFull(f.r, want[:]); err != nil {
				return 0, f.fail(cut(err))
			}
			if got := f.sum.Sum(nil); string(got) != string(want[:]) {
				return 0, f.fail(fmt.Errorf("%w: received %s, the sender sent %s", ErrChecksum, hex.EncodeToString(got), hex.EncodeToString(want[:])))
			}
			f.err = io.EOF
			return 0, io.EOF
		}
		if n > MaxFrame {
			return 0, f.fail(fmt.Errorf("%w: a frame of %d bytes (at most %d)", ErrStream, n, MaxFrame))
		}
		f.left = int(n)
	}
	n, err := f.r.Read(p[:min(len(p), f.left)])
	f.left -= n
	f.sum.Write(p[:n])
	f.bytes += int64(n)
	if err == io.EOF {
		if f.left > 0 {
			err = f.fail(cut(err))
		} else {
			err = nil
		}
	} else if err != nil {
		err = f.fail(err)
	}
	return n, err
}

func (f *FrameReader) fail(err error) error { f.err = err; return err }

func cut(err error) error {
	if err == io.EOF {
		return fmt.Errorf("%w: cut short before its end and checksum", io.ErrUnexpectedEOF)
	}
	return err
}

// Bytes is how many data bytes were read.
func (f *FrameReader) Bytes() int64 { return f.bytes }

// Sum is the hex SHA-256 of the data read so far (after io.EOF: of all
// of it, which matched the sender's).
func (f *FrameReader) Sum() string { return hex.EncodeToString(f.sum.Sum(nil)) }

// Offer is the first line of a send: what comes with the tree. Its JSON
// is one line of at most MaxOfferLine bytes.
type Offer struct {
	Name     string          `json:"name,omitempty"`     // the machine's name on the sending side
	Settings string          `json:"settings,omitempty"` // the .nspawn file's text
	Limits   json.RawMessage `json:"limits,omitempty"`   // the limits file's JSON
	Image    json.RawMessage `json:"image,omitempty"`    // the image record's JSON
	Enabled  bool            `json:"enabled,omitempty"`  // autostart enabled here
	Sockets  []string        `json:"sockets,omitempty"`  // its sockets here (enable --socket), "tcp:HOST:MACHINE"
	// KeepID keeps the machine's hostname and machine id (a move);
	// otherwise the copy gets its own, as a clone does.
	KeepID bool `json:"keep_id,omitempty"`
	// Storage says how the machine is kept here, when a receiver that
	// has (or takes) its base may take less than the whole tree: an
	// overlay machine and its base version. An nsbox that does not know
	// it answers without Mode and is sent the whole tree.
	Storage *StorageOffer `json:"storage,omitempty"`
}

// StorageOffer is how a sent machine is kept: Kind "overlay" or "btrfs",
// over Base. Of a btrfs machine, Parent is the UUID (as btrfs send calls
// it) of the read-only snapshot of its base version that a btrfs send of
// the machine is incremental from: a receiver that has received it has a
// subvolume whose received UUID it is.
type StorageOffer struct {
	Kind   string     `json:"kind"`
	Base   *BaseOffer `json:"base,omitempty"`
	Parent string     `json:"parent,omitempty"`
}

// BaseOffer names the base version an overlay machine is over: its key,
// version and ID (the same on every host that has it), and Info, its
// base.json here (what it was made of), for a receiver that takes it.
type BaseOffer struct {
	Key     string          `json:"key"`
	Version string          `json:"version"`
	ID      string          `json:"id"`
	Info    json.RawMessage `json:"info,omitempty"`
}

// The modes a receiver answers Ready with: what it wants sent.
const (
	// ModeTree (or no mode) is the whole tree as the machine sees it.
	ModeTree = "tree"
	// ModeUpper is an overlay machine's upper alone, as an image layer:
	// the receiver has the base version.
	ModeUpper = "upper"
	// ModeBase is the base version's tree first, then the upper.
	ModeBase = "base"
	// ModeBtrfs is a btrfs machine as a btrfs send stream incremental
	// from its base's read-only snapshot (StorageOffer.Parent), which the
	// receiver has received.
	ModeBtrfs = "btrfs"
	// ModeBtrfsBase is that read-only snapshot first, as a full btrfs
	// send stream, then the machine as in ModeBtrfs.
	ModeBtrfsBase = "btrfs-base"
)

// MaxOfferLine caps the offer line.
const MaxOfferLine = 1 << 20

// Reply is a line the receiver writes on its standard output: Ready once
// it has checked the name and the offer (before any byte of the tree),
// then Stored once the machine is in place, with the bytes and sum it
// read, which the sender checks against its own.
type Reply struct {
	Ready bool   `json:"ready,omitempty"`
	Mode  string `json:"mode,omitempty"` // with Ready: ModeTree (""), ModeUpper or ModeBase
	// Stored: the machine's stream (the tree, or the upper); Base: the
	// base's stream, in ModeBase.
	Stored     string `json:"stored,omitempty"`
	Bytes      int64  `json:"bytes,omitempty"`
	SHA256     string `json:"sha256,omitempty"`
	BaseBytes  int64  `json:"base_bytes,omitempty"`
	BaseSHA256 string `json:"base_sha256,omitempty"`
}

// Err is the stream's failure, if it had one (nil before its end and
// after a good one).
func (f *FrameReader) Err() error {
	if f.err == io.EOF {
		return nil
	}
	return f.err
}

// Done reports whether the whole stream was read and its sum matched.
func (f *FrameReader) Done() bool { return f.err == io.EOF }
