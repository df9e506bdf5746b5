// Package argv reads a command line the way nsbox's users type it, before
// urfave/cli does: command flags may follow the positional arguments
// ("nsbox create web --release trixie"), a flag that takes a value must
// have one, and a mistyped command or subcommand is named. It is generic
// urfave/cli work and imports nothing of nsbox.
package argv

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// MissingValueError is a flag that takes its value from the next argument
// given where there is none: last, or before "--" or another flag.
type MissingValueError struct {
	Flag string // as given: "--signal", "-n"
}

// Error says which flag lacks its value: "flag --signal needs a value".
func (e *MissingValueError) Error() string { return "flag " + e.Flag + " needs a value" }

// Hoist lets command flags follow positional arguments, as in
// "nsbox create web --release trixie": urfave/cli v2 stops reading flags at
// the first positional argument, so the command's flags are moved before
// them, and global flags given after the command before the command.
// Everything after "--" stays where it is. A flag that takes a value but
// ends the command line (or stands before "--" or another flag) is a
// *MissingValueError: taken as it is, it would swallow the machine name
// ("kill web --signal" read as --signal web).
func Hoist(app *cli.App, args []string) ([]string, error) {
	if err := checkFlagValues(app.Flags, args[1:min(commandIndex(app, args), len(args))], nil); err != nil {
		return nil, err
	}
	i := commandIndex(app, args)
	if i >= len(args) {
		return args, nil
	}
	cmdStart := i
	cmd := app.Command(args[i])
	if cmd == nil || cmd.SkipFlagParsing {
		return args, nil
	}
	// Descend into subcommands ("cache list"): their flags are hoisted.
	for i+1 < len(args) && len(cmd.Subcommands) > 0 {
		sub := cmd.Command(args[i+1])
		if sub == nil {
			break
		}
		cmd = sub
		i++
	}
	var globals, flags, positional []string
	rest := args[i+1:]
	if err := checkFlagValues(cmd.Flags, rest, app.Flags); err != nil {
		return nil, err
	}
	for j := 0; j < len(rest); j++ {
		a := rest[j]
		if a == "--" {
			positional = append(positional, rest[j:]...)
			break
		}
		if strings.HasPrefix(a, "-") && a != "-" {
			// A global flag after the command ("nsbox list -q") goes before
			// it, unless the command has a flag of that name.
			dst := &flags
			if !isFlag(cmd.Flags, a) && isFlag(app.Flags, a) {
				dst = &globals
			}
			*dst = append(*dst, a)
			if (takesValue(cmd.Flags, a) || dst == &globals && takesValue(app.Flags, a)) && j+1 < len(rest) {
				j++
				*dst = append(*dst, rest[j])
			}
			continue
		}
		positional = append(positional, a)
	}
	out := append(append([]string{}, args[:cmdStart]...), globals...)
	out = append(append(out, args[cmdStart:i+1]...), flags...)
	return append(out, positional...), nil
}

// checkFlagValues finds a flag in args (up to "--") that takes its value
// from the next argument when there is none: it is last, or "--" or a
// flag the app knows follows it. flags are the command's own, globals the
// global ones a command line may carry after the command.
func checkFlagValues(flags []cli.Flag, args []string, globals []cli.Flag) error {
	known := func(a string) bool {
		return strings.HasPrefix(a, "-") && (isFlag(flags, a) || isFlag(globals, a))
	}
	for j := 0; j < len(args); j++ {
		a := args[j]
		if a == "--" {
			return nil
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			continue
		}
		own := isFlag(flags, a)
		if !(own && takesValue(flags, a) || !own && takesValue(globals, a)) {
			continue
		}
		if j+1 == len(args) || args[j+1] == "--" || known(args[j+1]) {
			return &MissingValueError{Flag: a}
		}
		j++
	}
	return nil
}

// commandIndex skips the program name and global flags to find the
// command's place in args (len(args) when there is none).
func commandIndex(app *cli.App, args []string) int {
	i := 1
	for i < len(args) && strings.HasPrefix(args[i], "-") && args[i] != "--" {
		if takesValue(app.Flags, args[i]) {
			i++
		}
		i++
	}
	return i
}

// UnknownCommand returns the command named in args when app has none of
// that name: a top-level one, a subcommand ("cache lst", returned whole)
// or the topic of help ("help lst").
func UnknownCommand(app *cli.App, args []string) (string, bool) {
	i := commandIndex(app, args)
	if i >= len(args) {
		return "", false
	}
	if args[i] == "help" || args[i] == "h" {
		if i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") && app.Command(args[i+1]) == nil {
			return args[i+1], true
		}
		return "", false
	}
	cmd := app.Command(args[i])
	if cmd == nil {
		return args[i], true
	}
	path := args[i]
	for len(cmd.Subcommands) > 0 {
		// The first word after the command's flags names its subcommand.
		j := i + 1
		for j < len(args) && strings.HasPrefix(args[j], "-") && args[j] != "-" && args[j] != "--" {
			if takesValue(cmd.Flags, args[j]) || !isFlag(cmd.Flags, args[j]) && takesValue(app.Flags, args[j]) {
				j++
			}
			j++
		}
		if j >= len(args) || args[j] == "--" {
			return "", false
		}
		sub := cmd.Command(args[j])
		if sub == nil {
			// A command with an action of its own takes the word as its
			// argument ("snapshot web" beside "snapshot list web").
			if args[j] == "help" || args[j] == "h" || cmd.Action != nil {
				return "", false
			}
			return path + " " + args[j], true
		}
		cmd, i, path = sub, j, path+" "+args[j]
	}
	return "", false
}

// isFlag reports whether arg names one of flags.
func isFlag(flags []cli.Flag, arg string) bool {
	name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return true
			}
		}
	}
	return false
}

// takesValue reports whether arg names a flag that takes its value from
// the next argument.
func takesValue(flags []cli.Flag, arg string) bool {
	if strings.Contains(arg, "=") {
		return false
	}
	name := strings.TrimLeft(arg, "-")
	for _, f := range flags {
		for _, n := range f.Names() {
			if n != name {
				continue
			}
			if bf, ok := f.(*cli.BoolFlag); ok && bf != nil {
				return false
			}
			return true
		}
	}
	return false
}

// CompletingValue reports the flag whose value a completion request asks
// for: args end in "--generate-bash-completion" right after a flag that
// takes a value. urfave/cli would take the request for the flag's value,
// or fail on the flag.
func CompletingValue(app *cli.App, args []string) (string, bool) {
	n := len(args)
	if n < 3 || args[n-1] != "--generate-bash-completion" {
		return "", false
	}
	a := args[n-2]
	if !strings.HasPrefix(a, "-") || a == "-" || a == "--" {
		return "", false
	}
	i := commandIndex(app, args[:n-2])
	if i >= n-2 {
		return a, takesValue(app.Flags, a)
	}
	cmd := app.Command(args[i])
	if cmd == nil {
		return "", false
	}
	for i+1 < n-2 && len(cmd.Subcommands) > 0 {
		sub := cmd.Command(args[i+1])
		if sub == nil {
			break
		}
		cmd, i = sub, i+1
	}
	if takesValue(cmd.Flags, a) || !isFlag(cmd.Flags, a) && takesValue(app.Flags, a) {
		return a, true
	}
	return "", false
}

// CommandIndex is the place of the command in args, after the program
// name and the global flags (len(args) when there is none).
func CommandIndex(app *cli.App, args []string) int { return commandIndex(app, args) }
