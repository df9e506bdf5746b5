package machine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/sirupsen/logrus"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/image"
	"github.com/nsbox/nsbox/machine/storage"
	"github.com/nsbox/nsbox/remote"
)

// ErrRefused is a send the receiving side ended before it took the tree
// (it said why on its standard error).
var ErrRefused = errors.New("the receiving side refused the machine")

// ErrNotConfirmed is a send whose tree the receiving side did not
// confirm it stored, or confirmed with another size or sum than was sent.
var ErrNotConfirmed = errors.New("the receiving side did not confirm that it stored the machine")

// SendOptions are the choices of a send.
type SendOptions struct {
	// KeepID keeps the machine's hostname and machine id on the other
	// side (a move); otherwise the copy gets its own, as a clone does.
	KeepID bool
	// Progress, when set, is told the bytes of the stream sent so far,
	// after every write.
	Progress func(bytes int64)
}

// SendResult is what a send moved.
type SendResult struct {
	Bytes  int64  // bytes of the zstd tar stream
	SHA256 string // its sum, which the receiver confirmed
}

// Outgoing is a stopped machine being sent: locked as stopped from
// PrepareSend to Close, so that nothing boots or changes it meanwhile.
type Outgoing struct {
	m     *Manager
	name  string
	lock  *Lock
	offer remote.Offer
}

// PrepareSend checks that name is a stopped machine of this host, locks
// it, and reads what goes with its tree: its settings file, limits,
// image record and autostart state. It changes nothing.
func (m *Manager) PrepareSend(ctx context.Context, name string, o SendOptions) (*Outgoing, error) {
	if err := m.checkRootAndName(name, true); err != nil {
		return nil, err
	}
	lock, err := m.lockStopped(ctx, name)
	if err != nil {
		return nil, err
	}
	out := &Outgoing{m: m, name: name, lock: lock}
	if err := out.read(ctx, o); err != nil {
		lock.Unlock()
		return nil, err
	}
	return out, nil
}

func (g *Outgoing) read(ctx context.Context, o SendOptions) error {
	m, name := g.m, g.name
	g.offer = remote.Offer{Name: name, KeepID: o.KeepID, Enabled: m.AutostartState(ctx, name) == "enabled"}
	if b, err := os.ReadFile(m.settingsPath(name)); err == nil {
		g.offer.Settings = string(b)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, f := range []struct {
		path string
		to   *json.RawMessage
	}{{m.limitsPath(name), &g.offer.Limits}, {m.imagePath(name), &g.offer.Image}} {
		b, err := os.ReadFile(f.path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if !json.Valid(b) {
			return fmt.Errorf("%s is not JSON (remove it, or fix it)", f.path)
		}
		*f.to = json.RawMessage(bytes.TrimSpace(b))
	}
	return nil
}

// Enabled reports whether the machine boots with this host.
func (g *Outgoing) Enabled() bool { return g.offer.Enabled }

// Close releases the machine.
func (g *Outgoing) Close() { g.lock.Unlock() }

// Send is PrepareSend, Stream and Close.
func (m *Manager) Send(ctx context.Context, name string, to io.Writer, from io.Reader, o SendOptions) (SendResult, error) {
	g, err := m.PrepareSend(ctx, name, o)
	if err != nil {
		return SendResult{}, err
	}
	defer g.Close()
	return g.Stream(ctx, to, from, o.Progress)
}

// Stream sends the machine to a receiver (Receive, the remote "nsbox
// receive" run through ssh): the offer on to, the receiver's Ready on
// from, then the machine's tree as the machine sees it (an overlay's
// merged tree, owners unshifted) as a zstd tar in the frames of
// remote.FrameWriter, and last the receiver's Stored, whose byte count
// and sum must be what was sent. Nothing here changes. A receiver that
// ends before Ready is ErrRefused. progress, when set, is told the bytes
// sent so far after every write.
func (g *Outgoing) Stream(ctx context.Context, to io.Writer, from io.Reader, progress func(int64)) (SendResult, error) {
	m, name := g.m, g.name
	var res SendResult
	line, err := json.Marshal(g.offer)
	if err != nil {
		return res, err
	}
	if len(line) >= remote.MaxOfferLine {
		return res, fmt.Errorf("its settings are larger than %d bytes", remote.MaxOfferLine)
	}
	if _, err := to.Write(append(line, '\n')); err != nil {
		return res, ErrRefused
	}
	replies := bufio.NewReader(from)
	var r remote.Reply
	if err := readReply(replies, &r); err != nil || !r.Ready {
		return res, ErrRefused
	}
	fw := remote.NewFrameWriter(to)
	var out io.Writer = fw
	if progress != nil {
		out = progressWriter{fw, progress}
	}
	enc, err := zstd.NewWriter(out, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return res, err
	}
	tar := func(root string) error {
		args := append([]string{"--create", "--file=-", "--directory=" + root}, image.TarArgs...)
		return m.Runner.Run(ctx, &host.Cmd{Path: "tar", Args: append(args, "."), Stdout: enc})
	}
	if m.storageOf(name).Kind == storage.Overlay {
		err = m.withView(ctx, name, tar)
	} else {
		err = tar(m.Dir(name))
	}
	if err == nil {
		err = enc.Close()
	}
	if err == nil {
		err = fw.Close()
	}
	if err != nil {
		return res, err
	}
	res.Bytes, res.SHA256 = fw.Bytes(), fw.Sum()
	if err := readReply(replies, &r); err != nil || r.Stored == "" {
		return res, ErrNotConfirmed
	}
	if r.Bytes != res.Bytes || r.SHA256 != res.SHA256 {
		return res, fmt.Errorf("%w: it confirmed %d bytes with sum %s, but %d bytes with sum %s were sent",
			ErrNotConfirmed, r.Bytes, printable(r.SHA256), res.Bytes, res.SHA256)
	}
	return res, nil
}

type progressWriter struct {
	w  *remote.FrameWriter
	fn func(int64)
}

func (p progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	p.fn(p.w.Bytes())
	return n, err
}

// readReply reads one JSON line of the receiver's (at most 64 KiB).
func readReply(br *bufio.Reader, r *remote.Reply) error {
	line, err := readLine(br, 64<<10)
	if err != nil {
		return err
	}
	*r = remote.Reply{}
	return json.Unmarshal(line, r)
}

// readLine reads a line of at most max bytes, without its end.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > max {
			return nil, fmt.Errorf("%w: a line longer than %d bytes", remote.ErrStream, max)
		}
		if err == nil {
			return line[:len(line)-1], nil
		}
		if err != bufio.ErrBufferFull {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

func printable(s string) string {
	if len(s) > 80 {
		s = s[:80]
	}
	return fmt.Sprintf("%q", s)
}

// ReceiveResult is what a receive stored.
type ReceiveResult struct {
	Name   string
	Bytes  int64
	SHA256 string
}

// Receive is the receiving side of Send, reading in and answering on
// out: it checks name (valid, not taken here) and the offer (a settings
// file nsbox reads, limits and an image record that are JSON) before it
// answers Ready, so a refusal comes before any byte of the tree. The tree
// goes into a staging tree (.#NAME.*) through the checks of import
// (image.ArchiveChecker: every member, and the free space of the root
// directory's file system less a reserve); only when the stream's sum
// matches the sender's does the tree get its name, and then its settings,
// limits, image record and autostart. Any failure, or a stream cut short,
// leaves nothing.
func (m *Manager) Receive(ctx context.Context, name string, in io.Reader, out io.Writer) (ReceiveResult, error) {
	res := ReceiveResult{Name: name}
	if err := m.checkRootAndName(name, false); err != nil {
		return res, err
	}
	if err := m.ensureStore(); err != nil {
		return res, err
	}
	if err := m.taken(name); err != nil {
		return res, err
	}
	br := bufio.NewReaderSize(in, 64<<10)
	line, err := readLine(br, remote.MaxOfferLine)
	if err != nil {
		return res, fmt.Errorf("read the sender's offer: %w", err)
	}
	var offer remote.Offer
	if err := json.Unmarshal(line, &offer); err != nil {
		return res, fmt.Errorf("%w: the offer: %v", remote.ErrStream, err)
	}
	if offer.Settings != "" {
		if _, err := ParseSettingsFile(offer.Settings); err != nil {
			return res, fmt.Errorf("its settings file: %w", err)
		}
	}
	if len(offer.Limits) > 0 {
		var l backend.Limits
		if err := json.Unmarshal(offer.Limits, &l); err != nil {
			return res, fmt.Errorf("its limits: %w", err)
		}
	}
	if len(offer.Image) > 0 {
		var rec ImageRecord
		if err := json.Unmarshal(offer.Image, &rec); err != nil {
			return res, fmt.Errorf("its image record: %w", err)
		}
	}
	space, err := image.FreeSpace(m.Store(), m.RootDir)
	if err != nil {
		return res, err
	}
	if err := writeReply(out, remote.Reply{Ready: true}); err != nil {
		return res, err
	}
	fr := remote.NewFrameReader(br)
	c := &image.ArchiveChecker{Space: &space}
	fill := func(tmp string) error {
		if err := os.Mkdir(tmp, 0o755); err != nil {
			return err
		}
		if err := image.NoCasefold(tmp); err != nil {
			return err
		}
		dec, err := zstd.NewReader(fr, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20))
		if err != nil {
			return err
		}
		defer dec.Close()
		err = image.Extract(ctx, m.Runner, dec, tmp, c)
		if err == nil {
			// Whatever follows the tar's end, to the stream's end and sum.
			_, err = io.Copy(io.Discard, dec)
		}
		if err == nil {
			_, err = io.Copy(io.Discard, fr)
		}
		if serr := fr.Err(); serr != nil {
			// The stream's own failure (cut short, a wrong sum) is the
			// cause of what the extraction saw.
			return serr
		}
		if err != nil {
			return err
		}
		if !fr.Done() {
			return fmt.Errorf("%w: it has data after its end", remote.ErrStream)
		}
		if _, ok := readOSRelease(tmp); !ok {
			return errors.New("the tree has no os-release: not a root file system")
		}
		return os.Lchown(tmp, 0, 0)
	}
	personalise := func(tmp string) error {
		if offer.KeepID {
			// A move keeps its machine id; a hostname that was its old
			// name follows the new one, as with rename.
			if offer.Name == "" || offer.Name == name {
				return nil
			}
			r, err := os.OpenRoot(tmp)
			if err != nil {
				return err
			}
			defer r.Close()
			if b, err := r.ReadFile("etc/hostname"); err == nil && strings.TrimSpace(string(b)) == offer.Name {
				return host.WriteInRoot(r, "etc/hostname", name+"\n")
			}
			return nil
		}
		return bootstrap.Personalise(tmp, name)
	}
	if err := m.newTreeWith(ctx, name, fill, personalise); err != nil {
		return res, err
	}
	if err := m.receivedFiles(ctx, name, offer); err != nil {
		// All or nothing: the machine goes again.
		if rerr := m.Remove(context.WithoutCancel(ctx), name, false); rerr != nil {
			logrus.Warnf("remove %s again: %v", name, rerr)
		}
		return res, err
	}
	if c.Devices > 0 {
		logrus.Warnf("receive %s: left out %d device nodes (systemd-nspawn gives a machine its own /dev)", name, c.Devices)
	}
	res.Bytes, res.SHA256 = fr.Bytes(), fr.Sum()
	if err := writeReply(out, remote.Reply{Stored: name, Bytes: res.Bytes, SHA256: res.SHA256}); err != nil {
		// The sender is gone before it heard: it keeps its machine,
		// and so must not find a second one here.
		if rerr := m.Remove(context.WithoutCancel(ctx), name, false); rerr != nil {
			logrus.Warnf("remove %s again: %v", name, rerr)
		}
		return res, fmt.Errorf("the sender is gone: %w", err)
	}
	return res, nil
}

// receivedFiles writes what came with a received tree: its settings
// file, limits, image record, and autostart.
func (m *Manager) receivedFiles(ctx context.Context, name string, offer remote.Offer) error {
	if offer.Settings != "" {
		if err := host.WriteFileAtomic(m.settingsPath(name), []byte(offer.Settings), 0o644); err != nil {
			return err
		}
	}
	if len(offer.Limits) > 0 {
		var l backend.Limits
		if err := json.Unmarshal(offer.Limits, &l); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(m.limitsPath(name)), 0o755); err != nil {
			return err
		}
		if err := m.saveLimits(name, l); err != nil {
			return err
		}
	}
	if len(offer.Image) > 0 {
		var rec ImageRecord
		if err := json.Unmarshal(offer.Image, &rec); err != nil {
			return err
		}
		if err := m.writeImageRecord(name, &rec); err != nil {
			return err
		}
	}
	if offer.Enabled {
		// The machine is whole without it: a host that cannot start
		// machines at boot (no systemd) still takes it, and says so.
		if err := m.Enable(ctx, name); err != nil {
			logrus.Warnf("receive %s: it booted with the sending host, but enabling it here failed: %v (enable it: nsbox enable %s)", name, err, name)
		}
	}
	return nil
}

func writeReply(w io.Writer, r remote.Reply) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
