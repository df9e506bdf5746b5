package names

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBlockKeepsWhatIsNotNsboxs(t *testing.T) {
	recs := []Record{{Name: "db", Address: "10.89.0.6"}, {Name: "web", Address: "10.89.0.2"}}
	orig := "127.0.0.1 localhost\n# a comment\n::1 localhost ip6-localhost\n"
	with := string(Block([]byte(orig), recs, ""))
	want := orig + Begin + "\n10.89.0.6\tdb\n10.89.0.2\tweb\n" + End + "\n"
	if with != want {
		t.Fatalf("added:\n%s\nwant:\n%s", with, want)
	}
	// Lines the admin adds after the block stay where they are; the
	// block changes in place; the machine itself is left out of its own.
	edited := with + "192.0.2.1 printer\n"
	got := string(Block([]byte(edited), recs[1:], "web"))
	if got != orig+"192.0.2.1 printer\n" {
		t.Errorf("only the machine itself left: the block should go:\n%s", got)
	}
	got = string(Block([]byte(edited), recs[:1], ""))
	if got != orig+Begin+"\n10.89.0.6\tdb\n"+End+"\n192.0.2.1 printer\n" {
		t.Errorf("replaced in place:\n%s", got)
	}
	// No records: the file as it was, byte for byte.
	if got := string(Block([]byte(with), nil, "")); got != orig {
		t.Errorf("removed:\n%q\nwant\n%q", got, orig)
	}
	// A file without a final newline gets one before the block.
	if got := string(Block([]byte("127.0.0.1 localhost"), recs[:1], "")); !strings.HasPrefix(got, "127.0.0.1 localhost\n"+Begin) {
		t.Errorf("no final newline:\n%q", got)
	}
	// A marker that is only part of a line is not nsbox's block.
	odd := "10.0.0.1 x " + Begin + "\n"
	if got := string(Block([]byte(odd), nil, "")); got != odd {
		t.Errorf("a marker inside a line was taken for the block:\n%q", got)
	}
}

func TestTableKeepsLiveRecordsOnly(t *testing.T) {
	dir := t.TempDir()
	tb := Table{Dir: filepath.Join(dir, "names"), HostsFile: filepath.Join(dir, "hosts")}
	os.MkdirAll(tb.Dir, 0o755)
	os.WriteFile(tb.HostsFile, []byte("127.0.0.1 localhost\n"), 0o640)
	live := Record{Name: "web", Address: "10.89.0.2", Leader: os.Getpid(), Start: ProcStart(os.Getpid())}
	dead := Record{Name: "old", Address: "10.89.0.6", Leader: os.Getpid(), Start: ProcStart(os.Getpid()) + 1}
	for _, r := range []Record{live, dead} {
		b, _ := json.Marshal(r)
		os.WriteFile(filepath.Join(tb.Dir, r.Name+".json"), b, 0o644)
	}
	// Not a record: passed over, left alone.
	os.WriteFile(filepath.Join(tb.Dir, "../x.json"), []byte("{}"), 0o644)
	recs := tb.live()
	if len(recs) != 1 || recs[0].Name != "web" {
		t.Fatalf("live: %+v", recs)
	}
	if _, err := os.Stat(filepath.Join(tb.Dir, "old.json")); !os.IsNotExist(err) {
		t.Errorf("a dead machine's record stays: %v", err)
	}
	if err := rewriteHostFile(tb.HostsFile, recs); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(tb.HostsFile)
	if string(b) != "127.0.0.1 localhost\n"+Begin+"\n10.89.0.2\tweb\n"+End+"\n" {
		t.Errorf("hosts:\n%s", b)
	}
	if fi, _ := os.Stat(tb.HostsFile); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want the file's own 0640", fi.Mode().Perm())
	}
	if err := rewriteHostFile(tb.HostsFile, nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(tb.HostsFile); string(b) != "127.0.0.1 localhost\n" {
		t.Errorf("after the last machine:\n%s", b)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".#*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
	// A link in place of the hosts file is not followed.
	os.Remove(tb.HostsFile)
	os.Symlink("/etc/shadow", tb.HostsFile)
	if err := rewriteHostFile(tb.HostsFile, recs); err == nil {
		t.Error("a link in place of the hosts file was written through")
	}
}

func TestPublishRefusesWhatIsNoNameOrAddress(t *testing.T) {
	tb := Table{Dir: t.TempDir()}
	for _, r := range []Record{{Name: "web\n10.0.0.1 bank", Address: "10.89.0.2"}, {Name: "web", Address: "10.89.0.2 evil"}, {Name: "-x", Address: "10.89.0.2"}} {
		if err := tb.Publish(r); err == nil {
			t.Errorf("published %+v", r)
		}
	}
}
