package machine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
	"golang.org/x/sys/unix"
)

// maxSettingsSize bounds what cat and edit read of a settings file: far
// more than any settings file holds (systemd reads lines up to 1 MiB).
const maxSettingsSize = 4 << 20

// SettingsEntry is one assignment of a settings file.
type SettingsEntry struct {
	Section string `json:"section"`
	Key     string `json:"key"`
	Value   string `json:"value"`
	Line    int    `json:"line"`
}

// Settings is a machine's settings file as cat shows it.
type Settings struct {
	Name string `json:"name"`
	// Path is where the file is, or would be.
	Path   string `json:"path"`
	Exists bool   `json:"exists"`
	// Text is the file as it is ("" when it does not exist).
	Text string `json:"text"`
	// BootOptions are what nsbox reads in it (its defaults when there is
	// no file).
	BootOptions BootOptions `json:"boot_options"`
	// Entries are its assignments, in order ([] when none).
	Entries []SettingsEntry `json:"entries"`
	// Problems are what nsbox cannot read in it, or what edit would
	// refuse ([] when none).
	Problems []SettingsProblem `json:"problems"`
}

// ErrNotRegular is a settings file that is something else than a
// regular file (a link, a FIFO): nsbox neither reads nor replaces one.
var ErrNotRegular = errors.New("not a regular file")

// readSettingsFile reads the settings file at path without following a
// link in its last component and without blocking on a FIFO; exists is
// false when there is none.
func readSettingsFile(path string) (text []byte, exists bool, err error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil, false, nil
	}
	if errors.Is(err, unix.ELOOP) {
		return nil, true, fmt.Errorf("%s is a symbolic link: %w (nsbox reads and replaces only a file of its own there)", path, ErrNotRegular)
	}
	if err != nil {
		return nil, false, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return readRegular(os.NewFile(uintptr(fd), path))
}

// readRegular reads f, which must be a regular file of at most
// maxSettingsSize bytes, and closes it.
func readRegular(f *os.File) (text []byte, exists bool, err error) {
	path := f.Name()
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, true, err
	}
	if !fi.Mode().IsRegular() {
		return nil, true, fmt.Errorf("%s: %w", path, ErrNotRegular)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSettingsSize+1))
	if err != nil {
		return nil, true, err
	}
	if len(b) > maxSettingsSize {
		return nil, true, fmt.Errorf("%s is larger than %d MiB: not a settings file nsbox edits", path, maxSettingsSize>>20)
	}
	return b, true, nil
}

// Settings returns the settings file of machine name, as it is, with what
// nsbox reads in it.
func (m *Manager) Settings(ctx context.Context, name string) (Settings, error) {
	if err := m.Known(ctx, name); err != nil {
		return Settings{}, err
	}
	s := Settings{Name: name, Path: m.settingsPath(name), BootOptions: DefaultBootOptions(), Entries: []SettingsEntry{}, Problems: []SettingsProblem{}}
	text, exists, err := readSettingsFile(s.Path)
	if err != nil {
		return Settings{}, err
	}
	s.Exists, s.Text = exists, string(text)
	if !exists {
		s.BootOptions.Binds, s.BootOptions.Ports, s.BootOptions.BindUsers = []Bind{}, []string{}, []string{}
		return s, nil
	}
	s.Problems, _ = CheckSettings(s.Text)
	if doc, err := parseSettingsDoc(s.Text); err == nil {
		for _, l := range doc.lines {
			if l.opt != nil {
				s.Entries = append(s.Entries, SettingsEntry{l.opt.Section, l.opt.Name, l.opt.Value, l.line})
			}
		}
	}
	if o, err := ParseSettingsFile(s.Text); err == nil {
		s.BootOptions = o
	}
	if s.BootOptions.Binds == nil {
		s.BootOptions.Binds = []Bind{}
	}
	if s.BootOptions.Ports == nil {
		s.BootOptions.Ports = []string{}
	}
	if s.BootOptions.BindUsers == nil {
		s.BootOptions.BindUsers = []string{}
	}
	return s, nil
}

// SettingsError is an edited settings file edit refused.
type SettingsError struct {
	// File is the file's name (NAME.nspawn), for "FILE:LINE: why" lines.
	File     string
	Path     string
	Problems []SettingsProblem
	// Shown says the problems were printed already (edit asked to edit
	// again), so the error is its summary only.
	Shown bool
}

// Error is the summary line; Lines are the problems, one a line.
func (e *SettingsError) Error() string {
	n := "a problem"
	if len(e.Problems) > 1 {
		n = fmt.Sprintf("%d problems", len(e.Problems))
	}
	return fmt.Sprintf("the edited %s has %s (above); %s is left as it was", e.File, n, e.Path)
}

// Unwrap makes errors.Is(err, ErrInvalidOption) hold.
func (e *SettingsError) Unwrap() error { return ErrInvalidOption }

// Lines are the problems as "FILE:LINE: why", the whole file's as
// "FILE: why".
func (e *SettingsError) Lines() []string {
	var out []string
	for _, p := range e.Problems {
		if p.Line > 0 {
			out = append(out, fmt.Sprintf("%s:%d: %s", e.File, p.Line, p.Why))
		} else {
			out = append(out, fmt.Sprintf("%s: %s", e.File, p.Why))
		}
	}
	return out
}

// ErrChanged is a settings file that changed on disk while it was being
// edited.
var ErrChanged = errors.New("changed on disk")

// EditRequest says how to edit a settings file.
type EditRequest struct {
	// Editor is the editor's command line; the file's path is added.
	Editor []string
	// Again is asked after an edit was refused (err is a *SettingsError)
	// whether to open the editor again on the edited copy; nil never does.
	Again func(err error) bool
	// Stdin, Stdout and Stderr are the editor's; nil is nsbox's own (the
	// terminal).
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// EditResult says what edit did.
type EditResult struct {
	Path    string
	Changed bool // a new file was installed
	Created bool // there was none before
	Running bool // the machine runs: the file applies at its next boot
	// Enabled: the machine boots with the host from the unit enable
	// wrote, with the options of then; enable again gives it these.
	Enabled bool
	// Notes are what the installed file will not do (see CheckSettings).
	Notes []SettingsProblem
}

// Editor is the editor's command line as systemctl edit chooses it: the
// first of $SYSTEMD_EDITOR, $EDITOR and $VISUAL that is set (split at
// blanks, so "emacs -nw" works), else the first of editor, nano, vim and
// vi installed.
func Editor(getenv func(string) string, lookPath func(string) (string, error)) ([]string, error) {
	for _, v := range []string{"SYSTEMD_EDITOR", "EDITOR", "VISUAL"} {
		if s := getenv(v); strings.TrimSpace(s) != "" {
			if err := backend.ValidateText("$"+v, s); err != nil {
				return nil, err
			}
			return strings.Fields(s), nil
		}
	}
	for _, e := range []string{"editor", "nano", "vim", "vi"} {
		if p, err := lookPath(e); err == nil {
			return []string{p}, nil
		}
	}
	return nil, fmt.Errorf("%w: no editor: set EDITOR, or install nano or vim", ErrInvalidOption)
}

// EditSettings opens an editor on a copy of machine name's settings file
// (nsbox's defaults where it has none), in a private directory, and
// installs what the editor left there, once CheckSettings finds nothing
// wrong with it: atomically (a new file beside it, synced, renamed over
// it), and only if the file did not change on disk meanwhile (a boot
// rewrites it). Anything else leaves the file as it was; the copy is
// always removed.
func (m *Manager) EditSettings(ctx context.Context, name string, req EditRequest) (EditResult, error) {
	if err := m.Known(ctx, name); err != nil {
		return EditResult{}, err
	}
	if len(req.Editor) == 0 {
		return EditResult{}, fmt.Errorf("%w: no editor", ErrInvalidOption)
	}
	path := m.settingsPath(name)
	res := EditResult{Path: path}
	orig, exists, err := readSettingsFile(path)
	if err != nil {
		return res, err
	}
	start := orig
	if !exists {
		text, err := DefaultBootOptions().SettingsText()
		if err != nil {
			return res, err
		}
		start = []byte(text)
	}
	dir, err := os.MkdirTemp("", "nsbox-edit-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	copyPath := filepath.Join(dir, name+".nspawn")
	if err := os.WriteFile(copyPath, start, 0o600); err != nil {
		return res, err
	}
	// The copy is read back through the directory made here, whatever
	// happens to its path meanwhile ($TMPDIR may be a directory others
	// can write).
	private, err := os.OpenRoot(dir)
	if err != nil {
		return res, err
	}
	defer private.Close()
	stdin, stdout, stderr := req.Stdin, req.Stdout, req.Stderr
	if stdin == nil {
		stdin = os.Stdin
	}
	if stdout == nil {
		stdout = os.Stdout
	}
	if stderr == nil {
		stderr = os.Stderr
	}
	var edited []byte
	for {
		cmd := &host.Cmd{Path: req.Editor[0], Args: append(append([]string{}, req.Editor[1:]...), copyPath),
			Stdin: stdin, Stdout: stdout, Stderr: stderr, Foreground: true}
		if err := m.Runner.Run(ctx, cmd); err != nil {
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			var ee *host.ExitError
			if errors.As(err, &ee) {
				err = fmt.Errorf("exit status %d", ee.Status)
			}
			return res, fmt.Errorf("the editor (%s) failed: %v; %s is left as it was", strings.Join(req.Editor, " "), err, path)
		}
		f, err := private.OpenFile(name+".nspawn", os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
		if err == nil {
			edited, _, err = readRegular(f)
		}
		if err != nil {
			return res, fmt.Errorf("the edited copy: %w; %s is left as it was", err, path)
		}
		if bytes.Equal(edited, start) {
			return res, nil
		}
		problems, notes := CheckSettings(string(edited))
		if len(problems) == 0 {
			res.Notes = append(append(notes, m.bindNotes(string(edited))...), m.bindUserNotes(ctx, string(edited))...)
			break
		}
		serr := &SettingsError{File: name + ".nspawn", Path: path, Problems: problems}
		if req.Again == nil || !req.Again(serr) {
			return res, serr
		}
	}
	// Boot writes the file while it holds this lock; a boot under way is
	// waited for, and what it wrote is then a change.
	lock, err := host.LockFile(ctx, m.bootLockPath(name), true, true)
	if err != nil {
		return res, err
	}
	defer lock.Unlock()
	now, nowExists, err := readSettingsFile(path)
	if err != nil {
		return res, err
	}
	if nowExists != exists || !bytes.Equal(now, orig) {
		return res, fmt.Errorf("%s %w while it was edited (by a boot, or another edit?): nothing installed; edit it again", path, ErrChanged)
	}
	if err := host.WriteFileAtomic(path, edited, 0o644); err != nil {
		return res, err
	}
	syncDir(filepath.Dir(path))
	res.Changed, res.Created = true, !exists
	if _, err := m.Backend.Get(ctx, name); err == nil {
		res.Running = true
	}
	res.Enabled = m.AutostartState(ctx, name) == "enabled"
	return res, nil
}

// bindNotes says what a boot would refuse in the binds of a settings
// file that passed CheckSettings: what checkBinds refuses without
// --force-binds (a missing source, /, a writable directory host users
// reach).
func (m *Manager) bindNotes(text string) []SettingsProblem {
	o, err := ParseSettingsFile(text)
	if err != nil {
		return nil
	}
	var notes []SettingsProblem
	for _, b := range o.Binds {
		if err := m.checkBinds([]Bind{b}, o.PrivateUsers, false); err != nil {
			why := strings.TrimPrefix(err.Error(), ErrInvalidOption.Error()+": ")
			notes = append(notes, SettingsProblem{0, "the next boot refuses this bind without --force-binds: " + why})
		}
	}
	return notes
}

// bindUserNotes says what a boot would refuse in the bound users of a
// settings file that passed CheckSettings: a user the host does not have,
// or one nspawn does not bind (checkBindUsers).
func (m *Manager) bindUserNotes(ctx context.Context, text string) []SettingsProblem {
	o, err := ParseSettingsFile(text)
	if err != nil || !o.PrivateUsers {
		return nil
	}
	var notes []SettingsProblem
	for _, u := range o.BindUsers {
		if err := m.checkBindUsers(ctx, []string{u}, true); err != nil {
			why := strings.TrimPrefix(err.Error(), ErrInvalidOption.Error()+": ")
			notes = append(notes, SettingsProblem{0, "the next boot refuses this user: " + why})
		}
	}
	return notes
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
