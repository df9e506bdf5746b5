package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// manPage renders app's manual page in roff, from the same commands,
// usage texts and flags --help shows. nsbox writes the roff itself rather
// than through urfave/cli's Markdown and go-md2man: that path costs every
// run of nsbox the Markdown parser's start-up (its tables are built at
// init), and read flag texts such as "SRC[:DST[:OPTS]] (repeatable)" as
// links.
func manPage(app *cli.App) string {
	var b strings.Builder
	// No hyphenation: option names must read as typed.
	fmt.Fprintf(&b, ".nh\n.TH %s %d\n", app.Name, manSection)
	b.WriteString(".SH NAME\n")
	fmt.Fprintf(&b, "%s \\- %s\n", app.Name, roffText(app.Usage))
	b.WriteString(".SH SYNOPSIS\n")
	fmt.Fprintf(&b, ".B %s\n[global options] command [command options] [arguments...]\n", app.Name)
	if app.Description != "" {
		b.WriteString(".SH DESCRIPTION\n")
		roffParagraphs(&b, app.Description)
	}
	b.WriteString(".SH GLOBAL OPTIONS\n")
	roffFlags(&b, app.VisibleFlags())
	b.WriteString(".SH COMMANDS\n")
	for _, c := range app.VisibleCommands() {
		roffCommand(&b, c, "")
	}
	b.WriteString(".SH EXIT STATUS\n")
	for _, s := range exitStatuses {
		fmt.Fprintf(&b, ".TP\n.B %s\n%s\n", s.status, roffText(s.means))
	}
	return b.String()
}

// exitStatuses are the man page's EXIT STATUS (README "Exit status").
var exitStatuses = []struct{ status, means string }{
	{"0", "success; also a create of a machine that exists, made from the same source (nothing changed)"},
	{"1", "an error: the operation failed"},
	{"2", "a usage error (command, flag or flag value)"},
	{fmt.Sprint(exitNotFound), "no such machine (nor snapshot, nor machinectl image to adopt)"},
	{fmt.Sprint(exitExists), "the name is taken: a create from another source, a clone, rename, import, adopt or receive to a machine that exists, a name of another root directory, a snapshot that exists"},
	{fmt.Sprint(exitRunning), "refused because the machine runs (boot of a running machine, remove without --force, rename, clone, export, snapshot without --live, ...)"},
	{fmt.Sprint(exitNotRunning), "refused because the machine does not run (stop, reboot, terminate, kill, bind)"},
	{fmt.Sprint(exitBusy), "another nsbox or a systemd-nspawn holds the machine: try again"},
	{"129, 130, 143", "the remote side of -H lost its connection; interrupted by SIGINT; by SIGTERM"},
	{"126, 127, 255", "with -H, when no remote nsbox answered: another protocol version, no nsbox on the host, ssh could not connect"},
	{"CMD's", "shell -- CMD and run -- CMD exit with the command's status"},
}

// roffCommand writes one command, and its subcommands after it.
func roffCommand(b *strings.Builder, c *cli.Command, parent string) {
	name := strings.TrimSpace(parent + " " + c.Name)
	head := name
	if c.ArgsUsage != "" {
		head += " " + c.ArgsUsage
	}
	fmt.Fprintf(b, ".SS %s\n", roffText(head))
	roffParagraphs(b, c.Usage)
	if len(c.Aliases) > 0 {
		fmt.Fprintf(b, ".PP\nAlso: %s\n", roffText(strings.Join(c.Aliases, ", ")))
	}
	if c.Description != "" {
		b.WriteString(".PP\n")
		roffParagraphs(b, c.Description)
	}
	roffFlags(b, c.VisibleFlags())
	for _, s := range c.VisibleCommands() {
		roffCommand(b, s, name)
	}
}

// roffFlags writes each flag as a tagged paragraph: its names, its value
// placeholder, and the usage text, default and variables of --help.
func roffFlags(b *strings.Builder, flags []cli.Flag) {
	for _, f := range flags {
		var names []string
		for _, n := range f.Names() {
			if n == "help" || n == "h" {
				continue
			}
			dash := "--"
			if len(n) == 1 {
				dash = "-"
			}
			names = append(names, roffOption(dash+n))
		}
		if len(names) == 0 {
			continue
		}
		tag := strings.Join(names, ", ")
		text := ""
		if df, ok := f.(cli.DocGenerationFlag); ok {
			// A `PLACEHOLDER` in the usage names the value, as --help
			// shows it.
			placeholder, usage := unquoteUsage(df.GetUsage())
			if placeholder == "" {
				placeholder = "value"
			}
			if df.TakesValue() {
				tag += "=" + "\\fI" + roffText(placeholder) + "\\fP"
			}
			text = usage
			if d := df.GetDefaultText(); d != "" && df.TakesValue() {
				text += " (default: " + d + ")"
			} else if df.TakesValue() && df.GetValue() != "" {
				text += " (default: " + df.GetValue() + ")"
			}
			if env := df.GetEnvVars(); len(env) > 0 {
				text += " [$" + strings.Join(env, ", $") + "]"
			}
		}
		fmt.Fprintf(b, ".TP\n\\fB%s\\fP\n%s\n", tag, roffLine(roffText(text)))
	}
}

// roffParagraphs writes text whose blank lines separate paragraphs;
// lines indented in the text (examples) are kept as they are.
func roffParagraphs(b *strings.Builder, text string) {
	for i, para := range strings.Split(strings.TrimSpace(text), "\n\n") {
		if i > 0 {
			b.WriteString(".PP\n")
		}
		lines := strings.Split(para, "\n")
		verbatim := strings.HasPrefix(lines[0], " ")
		if verbatim {
			b.WriteString(".nf\n")
		}
		for _, l := range lines {
			if verbatim {
				l = strings.TrimSpace(l)
			}
			b.WriteString(roffLine(roffText(l)) + "\n")
		}
		if verbatim {
			b.WriteString(".fi\n")
		}
	}
}

// roffText escapes text for roff: a backslash is written \e.
func roffText(s string) string { return strings.ReplaceAll(s, `\`, `\e`) }

// roffOption writes an option name with minus signs that copy and paste
// as hyphens.
func roffOption(s string) string { return strings.ReplaceAll(roffText(s), "-", `\-`) }

// roffLine keeps a line that starts with "." or "'" from being read as
// a request.
func roffLine(s string) string {
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		return `\&` + s
	}
	return s
}

// unquoteUsage finds the first `NAME` in a flag's usage, as urfave/cli's
// help does: NAME is the value's placeholder, and the usage loses the
// quotes.
func unquoteUsage(usage string) (placeholder, text string) {
	start := strings.IndexByte(usage, '`')
	if start < 0 {
		return "", usage
	}
	end := strings.IndexByte(usage[start+1:], '`')
	if end < 0 {
		return "", usage
	}
	end += start + 1
	return usage[start+1 : end], usage[:start] + usage[start+1:end] + usage[end+1:]
}
