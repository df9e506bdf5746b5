package machine

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/dbusapi"
	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/direct"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/image"
	"github.com/nsbox/nsbox/machine/image/imagetest"
	"golang.org/x/sys/unix"
)

// journalRunner answers journalctl as a journal of entries 1..n would:
// each entry's cursor is "c=N", the messages "entry N".
type journalRunner struct {
	n   int
	ran [][]string
}

func (j *journalRunner) Run(ctx context.Context, c *host.Cmd) error {
	j.ran = append(j.ran, c.Args)
	if slices.Contains(c.Args, "--output=json") {
		lines := 0
		for _, a := range c.Args {
			fmt.Sscanf(a, "--lines=%d", &lines)
		}
		for i := j.n; i > 0 && i > j.n-lines; i-- {
			fmt.Fprintf(c.Stdout, `{"__CURSOR":"c=%d","__REALTIME_TIMESTAMP":"1"}`+"\n", i)
		}
	}
	return nil
}

// logs -n N --since T shows the last N entries since T, as logs -n N
// does: journalctl alone shows the first N since T.
func TestLogsLinesSinceAreTheLast(t *testing.T) {
	j := &journalRunner{n: 10}
	var out bytes.Buffer
	if err := backend.Journal(context.Background(), j, []string{"--root=/m"}, LogOptions{Lines: 2, Since: "10 min ago"}, &out); err != nil {
		t.Fatal(err)
	}
	if len(j.ran) != 2 {
		t.Fatalf("ran %q", j.ran)
	}
	show := strings.Join(j.ran[1], " ")
	if !strings.Contains(show, "--cursor=c=9") || !strings.Contains(show, "--no-tail") || strings.Contains(show, "--lines") || strings.Contains(show, "--since") {
		t.Errorf("shown with %q; want from the cursor of entry 9 (the 2nd from the end), all of them", show)
	}
	// Without --since, one call with --lines (journalctl's own tail).
	j = &journalRunner{n: 10}
	_ = backend.Journal(context.Background(), j, []string{"--root=/m"}, LogOptions{Lines: 2}, &out)
	if len(j.ran) != 1 || !slices.Contains(j.ran[0], "--lines=2") {
		t.Errorf("ran %q", j.ran)
	}
	// Nothing since then: nothing shown (and with -f, followed from there).
	j = &journalRunner{n: 0}
	_ = backend.Journal(context.Background(), j, []string{"--root=/m"}, LogOptions{Lines: 2, Since: "1 min ago"}, &out)
	if len(j.ran) != 1 {
		t.Errorf("empty journal: ran %q", j.ran)
	}
	j = &journalRunner{n: 0}
	_ = backend.Journal(context.Background(), j, []string{"--root=/m"}, LogOptions{Lines: 2, Since: "1 min ago", Follow: true}, &out)
	if len(j.ran) != 2 || !slices.Contains(j.ran[1], "--follow") || !slices.Contains(j.ran[1], "--since=1 min ago") {
		t.Errorf("empty journal, -f: ran %q", j.ran)
	}
}

func TestLineFilterDropsOnlyThatLine(t *testing.T) {
	drop := propagateNoise("web")
	for _, tc := range []struct{ in, want string }{
		{drop + "\n", ""},
		{"a\n" + drop + "\nb\n", "a\nb\n"},
		{"x" + drop + "\n", "x" + drop + "\n"},
		{drop + "x\n", drop + "x\n"},
		{drop[:10] + "\n", drop[:10] + "\n"},
		{propagateNoise("db") + "\n", propagateNoise("db") + "\n"},
		{"\n\n", "\n\n"},
	} {
		var b bytes.Buffer
		f := newLineFilter(&b, drop)
		// Byte by byte: nspawn's writes are split anywhere.
		for i := range len(tc.in) {
			f.Write([]byte{tc.in[i]})
		}
		f.Flush()
		if b.String() != tc.want {
			t.Errorf("%q: got %q, want %q", tc.in, b.String(), tc.want)
		}
	}
	// A prompt without a newline shows at once.
	var b bytes.Buffer
	f := newLineFilter(&b, drop)
	f.Write([]byte("Password: "))
	if b.String() != "Password: " {
		t.Errorf("prompt held back: %q", b.String())
	}
	// A last line that began like the noise is written by Flush.
	b.Reset()
	f = newLineFilter(&b, drop)
	f.Write([]byte("Attempted"))
	f.Flush()
	if b.String() != "Attempted" {
		t.Errorf("held text lost: %q", b.String())
	}
}

func TestResolveUser(t *testing.T) {
	m, _ := newTestManager(t, &fakeMachined{})
	mkMachine(t, m, "web")
	etc := filepath.Join(m.Dir("web"), "etc")
	os.WriteFile(filepath.Join(etc, "passwd"), []byte("root:x:0:0::/root:/bin/sh\n-evil:x:666:0::/:/bin/sh\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\n"), 0o644)
	for in, want := range map[string]string{"": "", "65534": "nobody", "33": "www-data", "www-data": "www-data", "0": "root", "root": "root"} {
		if got, err := m.ResolveUser("web", in); err != nil || got != want {
			t.Errorf("ResolveUser(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"4242", "nosuch", "666", "-evil", "a\nb"} {
		if _, err := m.ResolveUser("web", bad); err == nil || !strings.Contains(err.Error(), "--uid") {
			t.Errorf("ResolveUser(%q): %v; want an error naming --uid", bad, err)
		}
	}
	// Users from elsewhere than /etc/passwd: a name is passed on.
	os.WriteFile(filepath.Join(etc, "nsswitch.conf"), []byte("passwd: files ldap\n"), 0o644)
	if got, err := m.ResolveUser("web", "alice"); err != nil || got != "alice" {
		t.Errorf("ResolveUser(alice) with ldap = %q, %v", got, err)
	}
	// A FIFO for /etc/passwd is not read (it would block).
	os.Remove(filepath.Join(etc, "passwd"))
	if err := unix.Mkfifo(filepath.Join(etc, "passwd"), 0o644); err == nil {
		if got, err := m.ResolveUser("web", "65534"); err != nil || got != "65534" {
			t.Errorf("with a FIFO: %q, %v", got, err)
		}
	}
}

func TestUnitForReviewWithoutSystemd(t *testing.T) {
	m, r := newTestManager(t, &fakeMachined{})
	m.Backend = &direct.Backend{RunDir: m.RunDir, LogDir: m.LogDir, Runner: r}
	m.Self = func() (string, error) { return "/usr/local/bin/nsbox", nil }
	mkMachine(t, m, "web")
	if _, err := m.Unit("web"); err == nil {
		t.Fatal("Unit on the direct backend: want its error (enable needs systemd)")
	}
	text, err := m.UnitForReview("web")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"[Service]", "ExecStart=systemd-nspawn", "--machine=web", "WantedBy=machines.target"} {
		if !strings.Contains(text, want) {
			t.Errorf("unit lacks %q:\n%s", want, text)
		}
	}
}

// Without replace, an export keeps a file already at its name, also one
// made while the archive was written, and leaves nothing of its own.
func TestExportKeepsAnExistingFile(t *testing.T) {
	for _, unnamed := range []bool{true, false} {
		dir := t.TempDir()
		final := filepath.Join(dir, "web.tar")
		e, err := image.CreateExport(dir, "web.tar", unnamed)
		if err != nil {
			t.Fatal(err)
		}
		e.NoReplace = true
		e.File.Write([]byte("ARCHIVE"))
		os.WriteFile(final, []byte("precious"), 0o644)
		err = e.Publish()
		e.Abort()
		if err == nil || !strings.Contains(err.Error(), "already exists") || !strings.Contains(err.Error(), "--force") {
			t.Errorf("unnamed=%v: publish over a file: %v", unnamed, err)
		}
		if b, _ := os.ReadFile(final); string(b) != "precious" {
			t.Errorf("unnamed=%v: existing file replaced: %q", unnamed, b)
		}
		if l := imagetest.Leftovers(dir); len(l) != 0 {
			t.Errorf("unnamed=%v: left %q", unnamed, l)
		}
		// No file there: published.
		os.Remove(final)
		e, _ = image.CreateExport(dir, "web.tar", unnamed)
		e.NoReplace = true
		e.File.Write([]byte("ARCHIVE"))
		if err := e.Publish(); err != nil {
			t.Errorf("unnamed=%v: %v", unnamed, err)
		}
		if b, _ := os.ReadFile(final); string(b) != "ARCHIVE" {
			t.Errorf("unnamed=%v: published %q", unnamed, b)
		}
		if l := imagetest.Leftovers(dir); len(l) != 0 {
			t.Errorf("unnamed=%v: left %q", unnamed, l)
		}
	}
	// A missing directory is one line naming it, no temporary name.
	_, err := image.CreateExport(filepath.Join(t.TempDir(), "nodir"), "web.tar", true)
	if err == nil || !strings.Contains(err.Error(), "nodir does not exist") || strings.Contains(err.Error(), ".#") {
		t.Errorf("missing directory: %v", err)
	}
}

func TestExportToRefusesAnExistingFile(t *testing.T) {
	m, _ := newTestManager(t, &fakeMachined{})
	mkMachine(t, m, "web")
	dir := t.TempDir()
	h := &hostileDir{dir: dir, victim: imagetest.Victim(t)}
	m.Runner = h
	final := filepath.Join(dir, "web.tar")
	os.WriteFile(final, []byte("precious"), 0o644)
	err := m.ExportTo(context.Background(), "web", final, false)
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("export over a file: %v", err)
	}
	if b, _ := os.ReadFile(final); string(b) != "precious" {
		t.Errorf("existing file replaced: %q", b)
	}
	if h.swapped != nil {
		t.Errorf("tar ran before the refusal")
	}
	if err := m.ExportTo(context.Background(), "web", final, true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(final); string(b) != "ARCHIVE" {
		t.Errorf("--force did not replace: %q", b)
	}
}

// docs/json.md: empty lists are [], never left out.
func TestStatusJSONHasEmptyLists(t *testing.T) {
	m, _ := newTestManager(t, &fakeMachined{machines: map[string]dbusapi.Machine{}})
	mkMachine(t, m, "web")
	i, err := m.Status(context.Background(), "web", ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(i)
	for _, want := range []string{`"binds":[]`, `"ports":[]`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("status JSON lacks %s: %s", want, b)
		}
	}
}
