package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/nsbox/nsbox/machine"
	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

func catCommand() *cli.Command {
	cmd := simple("cat", "print a machine's settings file (/etc/systemd/nspawn/NAME.nspawn), as machinectl cat does",
		[]cli.Flag{outputFlag},
		func(c *cli.Context, m *machine.Manager, n string) error {
			if err := checkOutput(c); err != nil {
				return err
			}
			s, err := m.Settings(c.Context, n)
			if err != nil {
				return err
			}
			if c.String("output") == "json" {
				return writeJSON(os.Stdout, s)
			}
			// The file is root's, but may hold what a terminal acts on:
			// on one, it is shown printable; piped, as it is.
			var w io.Writer = os.Stdout
			var pw *machine.PrintableWriter
			if term.IsTerminal(int(os.Stdout.Fd())) {
				pw = machine.NewPrintableWriter(os.Stdout)
				w = pw
			}
			writeSettings(w, s)
			if pw != nil {
				_ = pw.Flush()
			}
			for _, p := range s.Problems {
				logrus.Warnf("%s.nspawn:%d: %s (fix it: nsbox edit %s)", n, p.Line, p.Why, n)
			}
			return nil
		})
	cmd.Description = "The file starts with a comment line naming it. A machine without one (never\n" +
		"booted by nsbox) shows nsbox's defaults, commented out: its next boot writes them.\n" +
		"-o json gives the text, every assignment and what nsbox reads in it.\n\n" +
		"   nsbox cat web\n   nsbox cat web -o json"
	return cmd
}

// writeSettings prints s as cat does.
func writeSettings(w io.Writer, s machine.Settings) {
	if s.Exists {
		fmt.Fprintf(w, "# %s\n%s", s.Path, s.Text)
		if s.Text != "" && !strings.HasSuffix(s.Text, "\n") {
			fmt.Fprintln(w)
		}
		return
	}
	fmt.Fprintf(w, "# %s does not exist: %s boots with nsbox's defaults,\n", s.Path, s.Name)
	fmt.Fprintf(w, "# which its next boot writes there (nsbox edit %s writes them now):\n#\n", s.Name)
	text, _ := s.BootOptions.SettingsText() // the defaults: they render
	for _, l := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		if !strings.HasPrefix(l, "#") { // nsbox's own header: said above
			fmt.Fprintln(w, strings.TrimRight("# "+l, " "))
		}
	}
}

func editCommand() *cli.Command {
	cmd := simple("edit", "edit a machine's settings file in $EDITOR; checked, then installed atomically",
		nil,
		func(c *cli.Context, m *machine.Manager, n string) error {
			editor, err := machine.Editor(os.Getenv, exec.LookPath)
			if err != nil {
				return err
			}
			req := machine.EditRequest{Editor: editor}
			if term.IsTerminal(int(os.Stdin.Fd())) && term.IsTerminal(int(os.Stderr.Fd())) {
				req.Again = func(err error) bool { return editAgain(c.Context, os.Stdin, os.Stderr, err) }
			}
			res, err := m.EditSettings(c.Context, n, req)
			if err != nil {
				return err
			}
			for _, note := range res.Notes {
				if note.Line > 0 {
					logrus.Warnf("%s.nspawn:%d: %s", n, note.Line, note.Why)
				} else {
					logrus.Warnf("%s.nspawn: %s", n, note.Why)
				}
			}
			if res.Enabled {
				logrus.Warnf("%s boots with the host from the unit its enable wrote, with the options of then: run nsbox enable %s again to give it these", n, n)
			}
			if quiet(c) {
				return nil
			}
			switch {
			case !res.Changed:
				fmt.Fprintf(os.Stderr, "%s: nothing changed; nothing installed\n", res.Path)
			case res.Running:
				fmt.Fprintf(os.Stderr, "installed %s; %s is running: the new settings apply when it next boots (nsbox stop %s && nsbox boot %s)\n", res.Path, n, n, n)
			default:
				fmt.Fprintf(os.Stderr, "installed %s; it applies when %s next boots\n", res.Path, n)
			}
			return nil
		})
	cmd.Description = "The editor is the first of $SYSTEMD_EDITOR, $EDITOR and $VISUAL set, else\n" +
		"editor, nano, vim or vi, as for systemctl edit. It edits a private copy\n" +
		"(nsbox's defaults for a machine without a settings file). On its exit the copy\n" +
		"is checked: sections and keys systemd-nspawn knows, values of nsbox's own keys\n" +
		"(Bind=, Port=, Bridge=, PrivateUsers=, ...) as their flags take them, booleans,\n" +
		"modes, Environment= assignments. A problem is printed as NAME.nspawn:LINE: why,\n" +
		"and the file is left as it was (on a terminal, edit asks to edit the copy again).\n" +
		"Otherwise the copy replaces the file atomically, unless the file changed\n" +
		"meanwhile. An unchanged copy installs nothing. A running machine gets the new\n" +
		"settings at its next boot.\n\n" +
		"   nsbox edit web\n   EDITOR='emacs -nw' nsbox edit web"
	return cmd
}

// editAgain prints the problems of a refused edit and asks whether to
// edit the copy again: yes unless the answer starts with n, or input
// ends, or the command is interrupted.
func editAgain(ctx context.Context, in io.Reader, out io.Writer, err error) bool {
	if se, ok := err.(*machine.SettingsError); ok {
		for _, l := range se.Lines() {
			fmt.Fprintln(out, machine.Printable(l))
		}
		se.Shown = true
	}
	fmt.Fprint(out, "Edit again? [Y/n] ")
	answer := make(chan string, 1)
	go func() {
		line, err := bufio.NewReader(in).ReadString('\n')
		if err != nil && line == "" {
			line = "n"
		}
		answer <- line
	}()
	select {
	case a := <-answer:
		a = strings.ToLower(strings.TrimSpace(a))
		return !strings.HasPrefix(a, "n")
	case <-ctx.Done():
		fmt.Fprintln(out)
		return false
	}
}
