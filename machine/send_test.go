package machine

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/nsbox/nsbox/dbusapi"
	"github.com/nsbox/nsbox/machine/image"
	"github.com/nsbox/nsbox/remote"
)

// received is how a Receive that receiving ran ended.
type received struct {
	res ReceiveResult
	err error
}

// receiving runs b's Receive of newName on pipes, as ssh joins a sender
// to the remote receive: the sender writes to to and reads the answers
// from from; done has the receive's end once its ends closed, as a
// remote process's do when it exits. wrap, when set, stands between the
// pipe and Receive (a connection that drops).
func receiving(b *Manager, newName string, wrap func(io.Reader) io.Reader) (to *io.PipeWriter, from *io.PipeReader, done <-chan received) {
	toR, toW := io.Pipe()
	fromR, fromW := io.Pipe()
	var in io.Reader = toR
	if wrap != nil {
		in = wrap(toR)
	}
	ch := make(chan received, 1)
	go func() {
		res, err := b.Receive(context.Background(), newName, in, fromW)
		toR.CloseWithError(io.ErrClosedPipe)
		fromW.Close()
		ch <- received{res, err}
	}()
	return toW, fromR, ch
}

// sendTo runs a send of name from a into b's Receive of newName, joined
// by pipes as ssh joins them.
func sendTo(t *testing.T, a, b *Manager, name, newName string) (SendResult, ReceiveResult, error, error) {
	t.Helper()
	ctx := context.Background()
	toW, fromR, done := receiving(b, newName, nil)
	sres, serr := a.Send(ctx, name, toW, fromR, SendOptions{})
	toW.Close()
	r := <-done
	return sres, r.res, serr, r.err
}

func TestSendReceive(t *testing.T) {
	a, b := realManager(t), realManager(t)
	mkMachine(t, a, "web")
	os.WriteFile(filepath.Join(a.Dir("web"), "etc", "motd"), []byte("hello from a\n"), 0o600)
	os.Chown(filepath.Join(a.Dir("web"), "etc", "motd"), 1000, 1001)
	os.MkdirAll(a.SettingsDir, 0o755)
	settings := "[Exec]\nBoot=yes\n\n[Network]\nVirtualEthernet=yes\n"
	os.WriteFile(a.settingsPath("web"), []byte(settings), 0o644)
	os.MkdirAll(filepath.Dir(a.limitsPath("web")), 0o755)
	os.WriteFile(a.limitsPath("web"), []byte(`{"memory_bytes": 536870912}`+"\n"), 0o644)

	sres, rres, serr, rerr := sendTo(t, a, b, "web", "web2")
	if serr != nil || rerr != nil {
		t.Fatalf("send: %v; receive: %v", serr, rerr)
	}
	if sres.Bytes == 0 || sres.Bytes != rres.Bytes || sres.SHA256 != rres.SHA256 {
		t.Fatalf("sent %+v, received %+v", sres, rres)
	}
	got, err := os.ReadFile(filepath.Join(b.Dir("web2"), "etc", "motd"))
	if err != nil || string(got) != "hello from a\n" {
		t.Fatalf("motd on b: %q, %v", got, err)
	}
	var st os.FileInfo
	if st, err = os.Lstat(filepath.Join(b.Dir("web2"), "etc", "motd")); err != nil || fileOwner(st) != [2]int{1000, 1001} {
		t.Fatalf("motd's owner on b: %v %v", st, err)
	}
	if h, _ := os.ReadFile(filepath.Join(b.Dir("web2"), "etc", "hostname")); string(h) != "web2\n" {
		t.Errorf("a copy gets its own hostname: %q", h)
	}
	if s, _ := os.ReadFile(b.settingsPath("web2")); string(s) != settings {
		t.Errorf("settings on b: %q", s)
	}
	if l, err := b.Limits("web2"); err != nil || l.IsZero() {
		t.Errorf("limits on b: %+v %v", l, err)
	}
	if _, err := os.Lstat(a.Dir("web")); err != nil {
		t.Errorf("a send changes nothing here: %v", err)
	}
	noStaging(t, b)
}

func TestSendMoveKeepsIdentity(t *testing.T) {
	a, b := realManager(t), realManager(t)
	mkMachine(t, a, "web")
	os.WriteFile(filepath.Join(a.Dir("web"), "etc", "hostname"), []byte("web\n"), 0o644)
	os.WriteFile(filepath.Join(a.Dir("web"), "etc", "machine-id"), []byte("0123456789abcdef0123456789abcdef\n"), 0o444)
	toW, fromR, done := receiving(b, "web3", nil)
	_, serr := a.Send(context.Background(), "web", toW, fromR, SendOptions{KeepID: true})
	toW.Close()
	if rerr := (<-done).err; serr != nil || rerr != nil {
		t.Fatalf("send: %v; receive: %v", serr, rerr)
	}
	if h, _ := os.ReadFile(filepath.Join(b.Dir("web3"), "etc", "hostname")); string(h) != "web3\n" {
		t.Errorf("a moved machine's hostname that was its name follows the new one: %q", h)
	}
	if id, _ := os.ReadFile(filepath.Join(b.Dir("web3"), "etc", "machine-id")); string(id) != "0123456789abcdef0123456789abcdef\n" {
		t.Errorf("a moved machine keeps its machine id: %q", id)
	}
}

func fileOwner(fi os.FileInfo) [2]int {
	st := fi.Sys().(*syscall.Stat_t)
	return [2]int{int(st.Uid), int(st.Gid)}
}

func TestSendRefusedName(t *testing.T) {
	a, b := realManager(t), realManager(t)
	mkMachine(t, a, "web")
	mkMachine(t, b, "web")
	sres, _, serr, rerr := sendTo(t, a, b, "web", "web")
	if !errors.Is(rerr, ErrExists) {
		t.Fatalf("receive of an existing name: %v", rerr)
	}
	if !errors.Is(serr, ErrRefused) || sres.Bytes != 0 {
		t.Fatalf("send to an existing name: %v, %d bytes sent", serr, sres.Bytes)
	}
	for _, bad := range []string{"../etc", "a/b", "x;rm -rf /", "$(id)", "-rf", ""} {
		_, _, serr, rerr := sendTo(t, a, b, "web", bad)
		if rerr == nil || !errors.Is(serr, ErrRefused) {
			t.Errorf("name %q: receive %v, send %v", bad, rerr, serr)
		}
	}
	noStaging(t, b)
}

// stream is a receiver's input: an offer line, then data framed and
// ended with a sum (bad flips the sum; cut leaves the end off).
func stream(t *testing.T, offer string, data []byte, bad, cut bool) io.Reader {
	var b bytes.Buffer
	b.WriteString(offer + "\n")
	fw := remote.NewFrameWriter(&b)
	fw.Write(data)
	if cut {
		return &b
	}
	fw.Close()
	if bad {
		b.Bytes()[b.Len()-1] ^= 1
	}
	return &b
}

// zstdTar is a zstd tar of the given members: a name, and its content (a
// directory when it ends in '/', a symbolic link to what follows "->").
func zstdTar(t *testing.T, members ...string) []byte {
	var b bytes.Buffer
	z, _ := zstd.NewWriter(&b)
	tw := tar.NewWriter(z)
	for _, m := range members {
		name, content, _ := strings.Cut(m, "=")
		h := &tar.Header{Name: name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(content))}
		switch {
		case strings.HasSuffix(name, "/"):
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		case strings.HasPrefix(content, "->"):
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, content[2:], 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(content))
		}
	}
	tw.Close()
	z.Close()
	return b.Bytes()
}

func TestReceiveRefusesBadStreams(t *testing.T) {
	b := realManager(t)
	good := zstdTar(t, "./", "./etc/", "./etc/os-release=ID=debian\n")
	for _, tc := range []struct {
		what string
		in   io.Reader
		want error
	}{
		{"wrong sum", stream(t, "{}", good, true, false), remote.ErrChecksum},
		{"cut short", stream(t, "{}", good, false, true), io.ErrUnexpectedEOF},
		{"cut in the data", stream(t, "{}", good[:len(good)/2], false, true), io.ErrUnexpectedEOF},
		{"an absolute link written through", stream(t, "{}", zstdTar(t, "./", "./etc/", "./etc/os-release=ID=debian\n", "./x=->/etc", "./x/passwd=root::0:0::/:/bin/sh\n"), false, false), image.ErrUnsafeArchive},
		{"a path out of the tree", stream(t, "{}", zstdTar(t, "./", "./etc/", "./etc/os-release=ID=debian\n", "../escape=x"), false, false), image.ErrUnsafeArchive},
		{"not zstd", stream(t, "{}", []byte("plain bytes"), false, false), nil},
		{"no os-release", stream(t, "{}", zstdTar(t, "./", "./x=y"), false, false), nil},
		{"settings nsbox cannot read", stream(t, `{"settings":"[Exec]\nBoot=maybe\n"}`, good, false, false), nil},
		{"limits that are not limits", stream(t, `{"limits":"x"}`, good, false, false), nil},
		{"no offer", strings.NewReader(""), io.ErrUnexpectedEOF},
	} {
		var out bytes.Buffer
		_, err := b.Receive(context.Background(), "got", tc.in, &out)
		if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.what, err, tc.want)
		}
		if b.exists("got") {
			t.Fatalf("%s: the machine was made", tc.what)
		}
		if _, err := os.Lstat(b.settingsPath("got")); err == nil {
			t.Fatalf("%s: a settings file was left", tc.what)
		}
		if strings.Contains(out.String(), "stored") {
			t.Errorf("%s: confirmed: %s", tc.what, out.String())
		}
		noStaging(t, b)
	}
	// The same stream, whole: taken.
	var out bytes.Buffer
	if _, err := b.Receive(context.Background(), "got", stream(t, "{}", good, false, false), &out); err != nil {
		t.Fatalf("a good stream: %v", err)
	}
	if !b.exists("got") || !strings.Contains(out.String(), `"stored":"got"`) {
		t.Fatalf("a good stream: exists %v, said %s", b.exists("got"), out.String())
	}
}

// TestReceiveCapsSpace: a stream larger than the root dir's free space is
// refused when it passes it, and leaves nothing.
func TestReceiveCapsSpace(t *testing.T) {
	b := realManager(t)
	b.ensureStore()
	space, err := image.FreeSpace(b.Store(), b.RootDir)
	if err != nil {
		t.Fatal(err)
	}
	// A tar header announcing a file larger than the free space: the
	// checker refuses it from its header.
	var raw bytes.Buffer
	z, _ := zstd.NewWriter(&raw)
	tw := tar.NewWriter(z)
	tw.WriteHeader(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "./big", Typeflag: tar.TypeReg, Mode: 0o644, Size: space.Bytes + 4<<30}) // a margin for what tests beside it write
	tw.Flush()
	z.Close()
	var out bytes.Buffer
	_, err = b.Receive(context.Background(), "big", stream(t, "{}", raw.Bytes(), false, false), &out)
	if !errors.Is(err, image.ErrNoSpace) || b.exists("big") {
		t.Fatalf("a stream larger than the free space: %v", err)
	}
	noStaging(t, b)
}

// A receiver that confirms what it did not store: the sender notices.
func TestSendNoticesALyingReceiver(t *testing.T) {
	a := realManager(t)
	mkMachine(t, a, "web")
	toR, toW := io.Pipe()
	fromR, fromW := io.Pipe()
	go func() {
		br := bufio.NewReader(toR)
		br.ReadString('\n')
		fromW.Write([]byte(`{"ready":true}` + "\n"))
		fr := remote.NewFrameReader(br)
		io.Copy(io.Discard, fr)
		b, _ := json.Marshal(remote.Reply{Stored: "web", Bytes: fr.Bytes(), SHA256: strings.Repeat("0", 64)})
		fromW.Write(append(b, '\n'))
		fromW.Close()
	}()
	_, err := a.Send(context.Background(), "web", toW, fromR, SendOptions{})
	if !errors.Is(err, ErrNotConfirmed) || !strings.Contains(err.Error(), "were sent") {
		t.Fatalf("a lying receiver: %v", err)
	}
}

func TestPrepareSendRefuses(t *testing.T) {
	f := &fakeMachined{machines: map[string]dbusapi.Machine{}, result: "done"}
	m, _ := newTestManager(t, f)
	m.Euid = 0
	mkMachine(t, m, "web")
	f.machines["web"] = dbusapi.Machine{Name: "web", Class: "container", RootDirectory: m.Dir("web"), Leader: os.Getpid()}
	for _, tc := range []struct {
		name string
		want error
	}{{"web", ErrRunning}, {"nope", ErrNotFound}, {"../etc", nil}, {"a;b", nil}} {
		g, err := m.PrepareSend(context.Background(), tc.name, SendOptions{})
		if err == nil {
			g.Close()
		}
		if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("send %q: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// A machine's sockets go with it, and are made there; a socket spec the
// receiver cannot read refuses the offer.
func TestSendCarriesSockets(t *testing.T) {
	a, b := realManager(t), realManager(t)
	for _, m := range []*Manager{a, b} {
		m.Self = func() (string, error) { return "/usr/bin/nsbox", nil }
	}
	mkMachine(t, a, "web")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	spec := "tcp:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port) + ":80"
	l.Close()
	if err := a.EnableSockets(context.Background(), "web", []string{spec}); err != nil {
		t.Fatal(err)
	}
	if _, _, serr, rerr := sendTo(t, a, b, "web", "web2"); serr != nil || rerr != nil {
		t.Fatalf("send: %v; receive: %v", serr, rerr)
	}
	if got := b.Sockets("web2"); len(got) != 1 || got[0] != spec {
		t.Errorf("sockets there: %v, want %s", got, spec)
	}
	var out bytes.Buffer
	if _, err := b.Receive(context.Background(), "web3", stream(t, `{"sockets":["tcp:1:2;rm -rf /"]}`, nil, false, false), &out); err == nil || b.exists("web3") {
		t.Errorf("a bad socket spec: %v", err)
	}
}
