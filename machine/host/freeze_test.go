package host

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestProcCgroups(t *testing.T) {
	for _, tc := range []struct{ text, v2, freezer string }{
		{"0::/nsbox/web/payload/init.scope\n", "/nsbox/web/payload/init.scope", ""},
		{"9:name=systemd:/x\n6:freezer:/machine/web\n0::/machine.slice/nsbox-web.service/payload/init.scope\n",
			"/machine.slice/nsbox-web.service/payload/init.scope", "/machine/web"},
		{"6:freezer,devices:/a\n", "", "/a"},
		// A cgroup name with a newline cannot add a line of its own.
		{"0::/nsbox/web/x\n0::/\n", "", ""},
	} {
		v2, fr := procCgroups(tc.text)
		if v2 != tc.v2 || fr != tc.freezer {
			t.Errorf("procCgroups(%q) = %q, %q; want %q, %q", tc.text, v2, fr, tc.v2, tc.freezer)
		}
	}
}

func TestCgroupMounts(t *testing.T) {
	info := `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
36 30 0:33 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
41 30 0:37 /sub /mnt/part rw,relatime - cgroup2 cgroup2 rw
`
	v2, fr := cgroupMounts(info)
	if v2 != "/sys/fs/cgroup/unified" || fr != "/sys/fs/cgroup/freezer" {
		t.Errorf("cgroupMounts = %q, %q", v2, fr)
	}
}

func TestFreezeTarget(t *testing.T) {
	for _, tc := range []struct{ p, self, want string }{
		{"/nsbox/web/payload/init.scope", "/", "/cg/nsbox/web/payload"},
		// nspawn's own cgroup under --keep-unit: the whole machine, its
		// payload (wherever its root moved PID 1) and nsbox's exec cgroup.
		{"/nsbox/web/supervisor", "/", "/cg/nsbox/web"},
		{"/machine.slice/nsbox-web.service/supervisor", "/", "/cg/machine.slice/nsbox-web.service"},
		{"/nsbox/web", "/user.slice", "/cg/nsbox/web"},
		{"/init.scope", "/", ""},           // the host's own systemd
		{"/", "/", ""},                     // the root cgroup
		{"/nsbox/web", "/nsbox/web/x", ""}, // nsbox would freeze itself
		{"/nsbox/../etc", "/", ""},
		{"relative", "/", ""},
	} {
		got, err := freezeTarget("/cg", tc.p, tc.self)
		if got != tc.want || (err == nil) != (tc.want != "") {
			t.Errorf("freezeTarget(%q, self %q) = %q, %v; want %q", tc.p, tc.self, got, err, tc.want)
		}
	}
}

func TestFreezeV2(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	write := func(f, s string) { os.WriteFile(filepath.Join(dir, f), []byte(s), 0o644) }
	read := func(f string) string { b, _ := os.ReadFile(filepath.Join(dir, f)); return strings.TrimSpace(string(b)) }

	write("cgroup.freeze", "0\n")
	write("cgroup.events", "populated 1\nfrozen 1\n")
	f, err := freezeV2(ctx, dir, time.Second)
	if err != nil || read("cgroup.freeze") != "1" {
		t.Fatalf("freeze: %v, cgroup.freeze %q", err, read("cgroup.freeze"))
	}
	if err := f.Thaw(); err != nil || read("cgroup.freeze") != "0" {
		t.Errorf("thaw: %v, cgroup.freeze %q", err, read("cgroup.freeze"))
	}

	// Never reported frozen: thawed again, and the error says what was seen.
	write("cgroup.events", "populated 1\nfrozen 0\n")
	if _, err := freezeV2(ctx, dir, 50*time.Millisecond); err == nil || !strings.Contains(err.Error(), "frozen 0") {
		t.Errorf("freeze that never happens: %v", err)
	}
	if read("cgroup.freeze") != "0" {
		t.Errorf("left frozen after a failed freeze: %q", read("cgroup.freeze"))
	}

	// Frozen by someone else before: left frozen.
	write("cgroup.freeze", "1\n")
	if f, err := freezeV2(ctx, dir, time.Second); err != nil || f.Thaw() != nil || read("cgroup.freeze") != "1" {
		t.Errorf("a cgroup frozen before was thawed: %v, %q", err, read("cgroup.freeze"))
	}
}

func TestFreezeV1(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "freezer.state"), []byte("THAWED\n"), 0o644)
	f, err := freezeV1(context.Background(), dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "freezer.state")); string(b) != "FROZEN" {
		t.Errorf("freezer.state %q", b)
	}
	f.Thaw()
	if b, _ := os.ReadFile(filepath.Join(dir, "freezer.state")); string(b) != "THAWED" {
		t.Errorf("freezer.state after thaw %q", b)
	}
}
