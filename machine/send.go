package machine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

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
	// Mode is what the receiver asked for: remote.ModeTree, ModeUpper or
	// ModeBase.
	Mode   string
	Bytes  int64  // bytes of the machine's stream (its tree, or its upper)
	SHA256 string // its sum, which the receiver confirmed
	// Of the base's stream, in ModeBase.
	BaseBytes  int64
	BaseSHA256 string
}

// Outgoing is a stopped machine being sent: locked as stopped from
// PrepareSend to Close, so that nothing boots or changes it meanwhile.
type Outgoing struct {
	m     *Manager
	name  string
	lock  *Lock
	offer remote.Offer
	// Of an overlay machine whose base version can go apart: its record
	// and base.
	rec  storage.Record
	base bootstrap.BaseInfo
	// Of a btrfs machine: its base version's read-only snapshot, which
	// btrfs streams of it are incremental from, and what lets go of the
	// version.
	parent        string
	releaseParent func()
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
	g.offer = remote.Offer{Name: name, KeepID: o.KeepID, Enabled: m.AutostartState(ctx, name) == "enabled", Sockets: m.Sockets(name)}
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
	g.offerBase(ctx)
	if g.offer.Storage == nil {
		g.offerBtrfs(ctx)
	}
	return nil
}

// offerBase offers an overlay machine as its base version and its upper,
// for a receiver that has the version or takes it. A base that cannot be
// named (gone, or its base.json unreadable) leaves the offer as it is: the
// whole tree is sent.
func (g *Outgoing) offerBase(ctx context.Context) {
	rec := g.m.storageOf(g.name)
	if rec.Kind != storage.Overlay || rec.Version == "" || rec.Base == "" {
		return
	}
	if p, ok := layerMarkerIn(g.m.layout(g.name).Upper()); ok {
		// Any user of the machine can make one where it may write.
		logrus.Debugf("send %s: the whole tree, not its upper: %s would be a whiteout in an image layer", g.name, p)
		return
	}
	info, err := g.m.basesOf(rec).Identify(ctx, rec.Base, rec.Version)
	if err != nil {
		logrus.Debugf("send %s: the whole tree, not its base apart: %v", g.name, err)
		return
	}
	desc := info
	desc.Root, desc.Machines, desc.Current, desc.Runs = "", nil, false, false
	raw, _ := json.Marshal(desc)
	g.rec, g.base = rec, info
	g.offer.Storage = &remote.StorageOffer{Kind: string(storage.Overlay),
		Base: &remote.BaseOffer{Key: info.Key, Version: info.Version, ID: info.ID, Info: raw}}
}

// layerMarkerIn finds a file in upper whose name an image layer takes for
// a whiteout or an opaque marker (".wh." and more): its upper cannot be
// sent as a layer without hiding what it does not hide here.
func layerMarkerIn(upper string) (string, bool) {
	var found string
	_ = filepath.WalkDir(upper, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if strings.HasPrefix(d.Name(), ".wh.") {
			found, _ = filepath.Rel(upper, p)
			return fs.SkipAll
		}
		return nil
	})
	return found, found != ""
}

// Enabled reports whether the machine boots with this host.
func (g *Outgoing) Enabled() bool { return g.offer.Enabled }

// Close releases the machine.
func (g *Outgoing) Close() {
	if g.releaseParent != nil {
		g.releaseParent()
	}
	g.lock.Unlock()
}

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
// from, then what the receiver asked for, each part a zstd stream in the
// frames of remote.FrameWriter with its sum: the machine's tree as the
// machine sees it (an overlay's merged tree, owners unshifted), or an
// overlay machine's upper alone as an image layer, after its base
// version's tree when the receiver does not have it. Last comes the
// receiver's Stored, whose byte counts and sums must be what was sent.
// Nothing here changes. A receiver that ends before Ready is ErrRefused.
// progress, when set, is told the bytes sent so far after every write.
func (g *Outgoing) Stream(ctx context.Context, to io.Writer, from io.Reader, progress func(int64)) (SendResult, error) {
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
	res.Mode = r.Mode
	if res.Mode == "" {
		res.Mode = remote.ModeTree
	}
	var sent int64
	tell := func(n int64) {
		if progress != nil {
			progress(sent + n)
		}
	}
	switch res.Mode {
	case remote.ModeTree:
		res.Bytes, res.SHA256, err = writeStream(to, tell, g.writeTree(ctx))
	case remote.ModeBase, remote.ModeUpper:
		if g.offer.Storage == nil {
			return res, fmt.Errorf("%w: it asked for %q, which was not offered", remote.ErrStream, res.Mode)
		}
		if res.Mode == remote.ModeBase {
			res.BaseBytes, res.BaseSHA256, err = writeStream(to, tell, g.writeBase(ctx))
			if err != nil {
				return res, err
			}
			sent = res.BaseBytes
		}
		res.Bytes, res.SHA256, err = writeStream(to, tell, g.writeUpper(ctx))
	case remote.ModeBtrfs, remote.ModeBtrfsBase:
		err = g.streamBtrfs(ctx, to, &res, tell, &sent)
	default:
		return res, fmt.Errorf("%w: it asked for %q", remote.ErrStream, printable(res.Mode))
	}
	if err != nil {
		return res, err
	}
	if err := readReply(replies, &r); err != nil || r.Stored == "" {
		return res, ErrNotConfirmed
	}
	if r.Bytes != res.Bytes || r.SHA256 != res.SHA256 || r.BaseBytes != res.BaseBytes || r.BaseSHA256 != res.BaseSHA256 {
		return res, fmt.Errorf("%w: it confirmed %d bytes with sum %s, but %d bytes with sum %s were sent",
			ErrNotConfirmed, r.BaseBytes+r.Bytes, printable(r.BaseSHA256+r.SHA256), res.BaseBytes+res.Bytes, res.BaseSHA256+res.SHA256)
	}
	return res, nil
}

// writeTree writes the machine's tree as the machine sees it, as export
// does.
func (g *Outgoing) writeTree(ctx context.Context) func(io.Writer) error {
	return func(w io.Writer) error { return g.m.writeTar(ctx, g.name, w) }
}

// writeBase writes the overlay machine's base version's tree, as a copy
// machine's. The base's lock is held only to find the version and open
// it: tar reads it through that open directory, so a refresh that moves
// the version meanwhile changes nothing, and no create, refresh or prune
// of the base waits for the network. (The machine over it keeps the
// version from prune and remove.)
func (g *Outgoing) writeBase(ctx context.Context) func(io.Writer) error {
	return func(w io.Writer) error {
		bc := g.m.basesOf(g.rec)
		unlock, err := bc.Hold(ctx, g.rec.Base)
		if err != nil {
			return err
		}
		root, err := bc.VersionRoot(g.rec.Base, g.rec.Version)
		var dir *os.File
		if err == nil {
			dir, err = os.OpenFile(root, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
		}
		unlock()
		if err != nil {
			return err
		}
		defer dir.Close()
		// ACLs by their ids (a receiver that asks for the base reads
		// them so).
		args := append([]string{"--create", "--file=-", fmt.Sprintf("--directory=/proc/%d/fd/%d", os.Getpid(), dir.Fd())}, image.XattrACLTarArgs...)
		return g.m.Runner.Run(ctx, &host.Cmd{Path: "tar", Args: append(args, "."), Stdout: w})
	}
}

// writeUpper writes the overlay machine's upper as an image layer (owners
// as the machine sees them, whiteouts and opaque directories OCI's): what
// it changed of its base, and nothing of the base.
func (g *Outgoing) writeUpper(ctx context.Context) func(io.Writer) error {
	return func(w io.Writer) error {
		_, err := image.WriteLayer(ctx, g.m.layout(g.name).Upper(), w, image.LayerOptions{
			Shift: g.rec.UpperBase(), Upper: true, Name: g.name + ":"})
		return err
	}
}

// writeStream writes what body writes to to as one zstd stream in frames
// with its sum, and returns its length and sum.
func writeStream(to io.Writer, progress func(int64), body func(io.Writer) error) (int64, string, error) {
	fw := remote.NewFrameWriter(to)
	out := io.Writer(progressWriter{fw, progress})
	enc, err := zstd.NewWriter(out, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return 0, "", err
	}
	err = body(enc)
	if cerr := enc.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fw.Close()
	}
	return fw.Bytes(), fw.Sum(), err
}

type progressWriter struct {
	w  *remote.FrameWriter
	fn func(int64)
}

func (p progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	if p.fn != nil {
		p.fn(p.w.Bytes())
	}
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
	Mode   string // what it asked for (remote.ModeTree, ModeUpper, ModeBase)
	Bytes  int64
	SHA256 string
	// Of the base's stream, in ModeBase.
	BaseBytes  int64
	BaseSHA256 string
}

// Receive is the receiving side of Send, reading in and answering on
// out: it checks name (valid, not taken here) and the offer (a settings
// file nsbox reads, limits and an image record that are JSON) before it
// answers Ready, so a refusal comes before any byte of the tree. Its Ready
// says what it wants: of an overlay machine whose base version (by its ID)
// it has, the upper alone; of one whose version it can take, the version
// first (stored in the base cache) and then the upper; otherwise the
// whole tree. Every stream goes into a staging tree (.#NAME.*, or the
// base cache's own) through the checks of import (image.ArchiveChecker:
// every member, and the free space of the file system less a reserve);
// only when the streams' sums match the sender's does the machine get its
// name, and then its settings, limits, image record and autostart. Any
// failure, or a stream cut short, leaves nothing, a base it took included.
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
	for _, spec := range offer.Sockets {
		if _, err := ParseSocket(spec); err != nil {
			return res, fmt.Errorf("its sockets: %w", err)
		}
	}
	in2 := &incoming{m: m, name: name, offer: offer, br: br}
	defer in2.release()
	in2.mode = in2.choose(ctx)
	res.Mode = in2.mode
	if err := writeReply(out, remote.Reply{Ready: true, Mode: res.Mode}); err != nil {
		return res, err
	}
	switch res.Mode {
	case remote.ModeTree:
		err = in2.tree(ctx)
	case remote.ModeBtrfs, remote.ModeBtrfsBase:
		err = in2.btrfs(ctx)
	default:
		err = in2.overlay(ctx)
	}
	if err != nil {
		return res, err
	}
	if err := m.receivedFiles(ctx, name, offer); err != nil {
		// All or nothing: the machine goes again.
		in2.removeAgain(ctx)
		return res, err
	}
	if in2.devices > 0 {
		logrus.Warnf("receive %s: left out %d device nodes (systemd-nspawn gives a machine its own /dev)", name, in2.devices)
	}
	res.Bytes, res.SHA256, res.BaseBytes, res.BaseSHA256 = in2.bytes, in2.sum, in2.baseBytes, in2.baseSum
	if err := writeReply(out, remote.Reply{Stored: name, Bytes: res.Bytes, SHA256: res.SHA256, BaseBytes: res.BaseBytes, BaseSHA256: res.BaseSHA256}); err != nil {
		// The sender is gone before it heard: it keeps its machine,
		// and so must not find a second one here.
		in2.removeAgain(ctx)
		return res, fmt.Errorf("the sender is gone: %w", err)
	}
	in2.kept = true
	return res, nil
}

// incoming is a receive under way.
type incoming struct {
	m     *Manager
	name  string
	offer remote.Offer
	br    *bufio.Reader
	mode  string // what it asked for

	// What the streams were: bytes and sums, and the device nodes left
	// out.
	bytes, baseBytes int64
	sum, baseSum     string
	devices          int

	// The base version (ModeUpper, ModeBase), held until release, which
	// also removes it, unless kept, when this receive added it.
	base bootstrap.BaseInfo
	hold *bootstrap.VersionHold
	kept bool
	// unhold lets go of a version held as a btrfs receive's parent.
	unhold func()
}

// choose decides what to ask the sender for. An overlay machine whose
// base version (its ID) is here: its upper. One whose version can be
// added here (a valid reference, no other bootstrap of that key under
// that version name), where overlay machines can be made: the base and
// the upper. Anything else: the whole tree.
func (in *incoming) choose(ctx context.Context) string {
	st := in.offer.Storage
	if st != nil && st.Kind == string(storage.Btrfs) {
		return in.chooseBtrfs(ctx)
	}
	if st == nil || st.Kind != string(storage.Overlay) || st.Base == nil {
		return remote.ModeTree
	}
	b := st.Base
	if err := bootstrap.CheckBaseRef(b.Key, b.Version, b.ID); err != nil {
		logrus.Debugf("receive %s: the whole tree: %v", in.name, err)
		return remote.ModeTree
	}
	bc := in.m.Bases()
	if _, ok := bc.FindID(b.Key, b.ID); ok {
		if err := in.m.probeOverlay(ctx); err != nil {
			logrus.Debugf("receive %s: the whole tree: %v", in.name, err)
			return remote.ModeTree
		}
		// Held from here, so that no prune takes it before the upper
		// comes (release lets go of it).
		v, hold, err := bc.HoldID(ctx, b.Key, b.ID)
		if err != nil {
			logrus.Debugf("receive %s: the whole tree: %v", in.name, err)
			return remote.ModeTree
		}
		in.base, in.hold = v, hold
		return remote.ModeUpper
	}
	if bc.HasVersion(b.Key, b.Version) {
		logrus.Debugf("receive %s: the whole tree: base %s has another version %s here", in.name, b.Key, b.Version)
		return remote.ModeTree
	}
	if err := in.m.probeOverlay(ctx); err != nil {
		logrus.Debugf("receive %s: the whole tree: %v", in.name, err)
		return remote.ModeTree
	}
	return remote.ModeBase
}

// release lets go of the base version, and removes the one this receive
// added unless the machine over it was kept.
func (in *incoming) release() {
	in.hold.Release(in.kept)
	if in.unhold != nil {
		in.unhold()
	}
}

// removeAgain removes the received machine after a failure past its
// publication.
func (in *incoming) removeAgain(ctx context.Context) {
	if err := in.m.Remove(context.WithoutCancel(ctx), in.name, false); err != nil {
		logrus.Warnf("remove %s again: %v", in.name, err)
	}
}

// readStream reads one zstd stream in frames from br: fill reads what it
// decompresses; the rest of the stream (to its end and sum) is read after
// it. The stream's own failure (cut short, a wrong sum) is the cause of
// what fill saw.
func readStream(br *bufio.Reader, fill func(io.Reader) error) (int64, string, error) {
	fr := remote.NewFrameReader(br)
	dec, err := zstd.NewReader(fr, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20))
	if err != nil {
		return 0, "", err
	}
	defer dec.Close()
	err = fill(dec)
	if err == nil {
		_, err = io.Copy(io.Discard, dec)
	}
	if err == nil {
		_, err = io.Copy(io.Discard, fr)
	}
	if serr := fr.Err(); serr != nil {
		return 0, "", serr
	}
	if err != nil {
		return 0, "", err
	}
	if !fr.Done() {
		return 0, "", fmt.Errorf("%w: it has data after its end", remote.ErrStream)
	}
	return fr.Bytes(), fr.Sum(), nil
}

// extractInto fills the new directory dir (made 0755) with the checked
// extraction of a tar stream, within the free space of dir's file system.
func (in *incoming) extractInto(ctx context.Context, dir string) (func(io.Reader) error, error) {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	if err := image.NoCasefold(dir); err != nil {
		return nil, err
	}
	space, err := image.FreeSpace(dir, dir)
	if err != nil {
		return nil, err
	}
	// The base's and the upper's streams carry ACLs as attributes.
	c := &image.ArchiveChecker{Space: &space, XattrACLs: in.mode != remote.ModeTree}
	return func(r io.Reader) error {
		err := image.Extract(ctx, in.m.Runner, r, dir, c)
		in.devices += c.Devices
		return err
	}, nil
}

// isRootFS refuses a received tree that is not a root file system.
func isRootFS(tree string) error {
	if _, ok := readOSRelease(tree); !ok {
		return errors.New("the tree has no os-release: not a root file system")
	}
	return nil
}

// tree receives the whole tree as a directory machine.
func (in *incoming) tree(ctx context.Context) error {
	fill := func(tmp string) error {
		extract, err := in.extractInto(ctx, tmp)
		if err != nil {
			return err
		}
		if in.bytes, in.sum, err = readStream(in.br, extract); err != nil {
			return err
		}
		if err := isRootFS(tmp); err != nil {
			return err
		}
		return os.Lchown(tmp, 0, 0)
	}
	personalise := func(tmp string) error {
		_, err := in.personalise(tmp)
		return err
	}
	return in.m.newTreeWith(ctx, in.name, fill, personalise)
}

// personalise gives the received tree at tree its own hostname and
// machine id, as a clone does; a move keeps its machine id, and a hostname
// that was its old name follows the new one, as with rename. It returns
// the paths it wrote.
func (in *incoming) personalise(tree string) ([]string, error) {
	if !in.offer.KeepID {
		return personalised, bootstrap.Personalise(tree, in.name)
	}
	if in.offer.Name == "" || in.offer.Name == in.name {
		return nil, nil
	}
	r, err := os.OpenRoot(tree)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if b, err := r.ReadFile("etc/hostname"); err == nil && strings.TrimSpace(string(b)) == in.offer.Name {
		return []string{"etc/hostname"}, host.WriteInRoot(r, "etc/hostname", in.name+"\n")
	}
	return nil, nil
}

// overlay receives an overlay machine: its base version first (ModeBase),
// into the base cache, then its upper, over that version.
func (in *incoming) overlay(ctx context.Context) error {
	m, b := in.m, in.offer.Storage.Base
	bc := m.Bases()
	base := func() (storage.Record, error) {
		var err error
		if in.mode == remote.ModeBase {
			var info bootstrap.BaseInfo
			if err := json.Unmarshal(b.Info, &info); err != nil {
				return storage.Record{}, fmt.Errorf("%w: its base: %v", remote.ErrStream, err)
			}
			info.Key, info.Version, info.ID = b.Key, b.Version, b.ID
			filled := false
			in.base, in.hold, err = bc.AddReceived(ctx, info, func(root string) error {
				filled = true
				extract, err := in.extractInto(ctx, root)
				if err != nil {
					return err
				}
				if in.baseBytes, in.baseSum, err = readStream(in.br, extract); err != nil {
					return err
				}
				if err := isRootFS(root); err != nil {
					return err
				}
				return os.Lchown(root, 0, 0)
			})
			if err == nil && !filled {
				// Another receive brought the same version meanwhile:
				// its stream is read, and checked, all the same.
				in.baseBytes, in.baseSum, err = readStream(in.br, func(r io.Reader) error {
					_, err := io.Copy(io.Discard, r)
					return err
				})
			}
		}
		if err != nil {
			return storage.Record{}, err
		}
		return storage.Record{Base: in.base.Key, Version: in.base.Version, Lower: in.base.Root, Bases: bc.Dir}, nil
	}
	fillUpper := func(upper string, uid int) error {
		extract, err := in.extractInto(ctx, upper)
		if err != nil {
			return err
		}
		if in.bytes, in.sum, err = readStream(in.br, extract); err != nil {
			return err
		}
		if err := storage.FromLayer(upper); err != nil {
			return err
		}
		// Its ids, as the sender chose them, are the machine's alone.
		if err := storage.Confine(upper); err != nil {
			return err
		}
		// Extracted as the machine sees it: its root becomes uid.
		return storage.Shift(upper, 0, uid)
	}
	return m.newOverlayWith(ctx, in.name, base, fillUpper, in.personalise)
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
	if len(offer.Sockets) > 0 {
		// As autostart: a host without socket activation, or whose
		// ports are taken, keeps the machine and says so.
		if err := m.EnableSockets(ctx, name, offer.Sockets); err != nil {
			logrus.Warnf("receive %s: its sockets (%s) could not be made here: %v (make them: nsbox enable --socket ... %s)", name, strings.Join(offer.Sockets, " "), err, name)
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
