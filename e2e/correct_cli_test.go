//go:build e2e

package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

// correctCLI goes through documented commands as a new user would and
// checks that they do what the README, --help, the man page and
// docs/json.md say (issue 17, items 8-12).
func correctCLI(t *testing.T, e *env) {
	const name = "e2e-q-cli"
	tree := e.rootDir + "/" + name
	e.mustNsb(t, "create", name, "--release", "bookworm", "--storage", "copy")
	defer e.nsb(t, "remove", "--force", name)
	e.mustSh(t, "rm -rf /var/tmp/e2e-q && mkdir -m 700 /var/tmp/e2e-q && mkdir /var/tmp/e2e-q/dir && echo in-dir > /var/tmp/e2e-q/dir/f && echo a-file > /var/tmp/e2e-q/file")
	defer e.sh(t, "rm -rf /var/tmp/e2e-q")

	t.Run("usage errors exit 2 and name the flag", func(t *testing.T) {
		wantFail(t, e.nsb(t, "kill", name, "--signal"), 2, "flag --signal needs a value")
		wantFail(t, e.nsb(t, "logs", name, "-n"), 2, "flag -n needs a value")
		wantFail(t, e.nsb(t, "create", name, "--release"), 2, "flag --release needs a value")
		wantFail(t, e.nsb(t, "boot", name, "--bind"), 2, "flag --bind needs a value")
		wantFail(t, e.run(t, e.nsbox, "--backend", "bogus", "--root-dir", e.rootDir, "list"), 2, "--backend")
		wantFail(t, e.nsb(t, "cache", "lst"), 2, `unknown command "cache lst"`)
	})

	t.Run("a stopped machine", func(t *testing.T) {
		// status -o json: empty lists are [] (docs/json.md).
		r := e.mustNsb(t, "status", "-o", "json", name)
		var st struct {
			Options map[string]json.RawMessage `json:"boot_options"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
			t.Fatalf("status JSON: %v\n%s", err, r.stdout)
		}
		for _, k := range []string{"binds", "ports"} {
			if string(st.Options[k]) != "[]" {
				t.Errorf("boot_options.%s = %q, want []:\n%s", k, st.Options[k], r.stdout)
			}
		}
		var bases []map[string]json.RawMessage
		if err := json.Unmarshal([]byte(e.mustNsb(t, "cache", "list", "-o", "json").stdout), &bases); err != nil {
			t.Fatal(err)
		}
		for _, b := range bases {
			if _, ok := b["mirror"]; !ok {
				t.Errorf("cache list -o json: a base without mirror: %v", b)
			}
		}
		// unit prints the unit on every host, systemd or not.
		if r := e.mustNsb(t, "unit", name); !strings.Contains(r.stdout, "[Service]") || !strings.Contains(r.stdout, "ExecStart=") {
			t.Errorf("unit:\n%s", r)
		}
		if r := e.mustNsb(t, "man"); !strings.HasPrefix(r.stdout, ".nh\n.TH nsbox 1\n") || strings.Contains(r.stdout, "repeatable\\[ra]") {
			t.Errorf("man page: section or a stray link:\n%.300s", r.stdout)
		}
		// A shell into a stopped machine: no noise from nspawn about its
		// propagation directory (direct backend: /run is no tmpfs here).
		r = e.mustNsb(t, "shell", name, "--", "true")
		if strings.Contains(r.stderr, "Attempted to remove") || !strings.Contains(r.stderr, "is not running") {
			t.Errorf("shell into a stopped machine:\n%s", r)
		}
		if out := e.query(t, "ls /run/systemd/nspawn/propagate/ 2>/dev/null | grep -x "+name); out != "" {
			t.Errorf("nspawn's propagation directory was left: %s", out)
		}
		// --uid takes a numeric ID, on a stopped machine too.
		if r := e.mustNsb(t, "shell", "-u", "65534", name, "--", "id", "-un"); strings.TrimSpace(r.stdout) != "nobody" {
			t.Errorf("shell -u 65534:\n%s", r)
		}
		wantFail(t, e.nsb(t, "shell", "--uid", "4242", name, "--", "id"), 1, "--uid 4242")
	})

	t.Run("export keeps an existing file", func(t *testing.T) {
		out := "/var/tmp/e2e-q/" + name + ".tar"
		e.mustSh(t, "echo precious > "+out)
		wantFail(t, e.nsb(t, "export", name, out), 1, "already exists")
		if got := e.mustSh(t, "cat "+out); got != "precious\n" {
			t.Errorf("export replaced an existing file without --force: %q", got[:min(len(got), 40)])
		}
		e.mustNsb(t, "export", name, out, "--force")
		e.mustSh(t, "tar -tf "+out+" ./etc/os-release >/dev/null")
		r := e.nsb(t, "export", name, "/var/tmp/e2e-q/nodir/x.tar")
		wantFail(t, r, 1, "nodir does not exist")
		if strings.Contains(r.stderr, ".#") {
			t.Errorf("export names a temporary file:\n%s", r)
		}
		if left := e.query(t, "ls -A /var/tmp/e2e-q | grep '^\\.#'"); left != "" {
			t.Errorf("export left %s", left)
		}
	})

	e.mustNsb(t, "boot", name)

	t.Run("bind", func(t *testing.T) {
		// --mkdir makes what is missing as the machine's root.
		e.mustNsb(t, "bind", name, "/var/tmp/e2e-q/dir", "/mnt/new/dir", "--mkdir")
		r := e.mustNsb(t, "shell", name, "--", "sh", "-c", "stat -c %U:%G /mnt/new; cat /mnt/new/dir/f")
		if r.stdout != "root:root\nin-dir\n" {
			t.Errorf("--mkdir: the machine's root does not own what it made:\n%s", r)
		}
		// A file is bound onto a file, made empty by --mkdir.
		e.mustNsb(t, "bind", name, "/var/tmp/e2e-q/file", "/mnt/files/one", "--mkdir", "--read-only")
		r = e.mustNsb(t, "shell", name, "--", "sh", "-c", "test -f /mnt/files/one && cat /mnt/files/one && stat -c %U /mnt/files")
		if r.stdout != "a-file\nroot\n" {
			t.Errorf("bind of a file:\n%s", r)
		}
		// Failures are one clear line, and leave nothing behind.
		wantFail(t, e.nsb(t, "bind", name, "/var/tmp/e2e-q/file", "/mnt/new", "--mkdir"), 1, "is a directory in the machine")
		wantFail(t, e.nsb(t, "bind", name, "/var/tmp/e2e-q/dir", "/mnt/files/one"), 1, "is not a directory in the machine")
		wantFail(t, e.nsb(t, "bind", name, "/var/tmp/e2e-q/dir", "/mnt/absent/x"), 1, "add --mkdir")
		long := strings.Repeat("x", 300)
		wantFail(t, e.nsb(t, "bind", name, "/var/tmp/e2e-q/dir", "/mnt/gone/deeper/"+long, "--mkdir"), 1, "create /mnt/gone/deeper/")
		wantFail(t, e.nsb(t, "bind", name, "/var/tmp/e2e-q/file", "/mnt/gone2/f/"+long, "--mkdir"), 1, "create /mnt/gone2/f/")
		if r := e.mustNsb(t, "shell", name, "--", "ls", "/mnt"); r.stdout != "files\nnew\n" {
			t.Errorf("failed binds left something in /mnt:\n%s", r)
		}
		// The error for / names bind's own flag, and bind has it.
		wantFail(t, e.nsb(t, "bind", name, "/", "/mnt/host"), 1, "--force-binds")
		if r := e.mustNsb(t, "bind", "--help"); !strings.Contains(r.stdout, "--force-binds") {
			t.Errorf("bind --help has no --force-binds:\n%s", r.stdout)
		}
		e.mustSh(t, "test ! -e "+tree+"/mnt/host")
	})

	t.Run("shell and logs", func(t *testing.T) {
		if r := e.mustNsb(t, "shell", "-u", "65534", name, "--", "id", "-u"); strings.TrimSpace(r.stdout) != "65534" {
			t.Errorf("shell -u 65534:\n%s", r)
		}
		wantFail(t, e.nsb(t, "shell", name, "--uid", "nosuch", "--", "id"), 1, "--uid nosuch")
		e.mustNsb(t, "stop", name)
		// The machine is stopped: its journal no longer grows.
		last := e.mustNsb(t, "logs", name, "-n", "2").stdout
		since := e.mustNsb(t, "logs", name, "-n", "2", "--since", "10 min ago").stdout
		if strings.Count(last, "\n") != 2 || since != last {
			t.Errorf("logs -n 2 --since: want the last two entries\n%s\ngot\n%s", last, since)
		}
	})
}
