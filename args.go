package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// hoistFlags lets command flags follow positional arguments, as in
// "nsbox create web --release trixie": urfave/cli v2 stops reading flags at
// the first positional argument, so the command's flags are moved before
// them. Everything after "--" stays where it is.
func hoistFlags(app *cli.App, args []string) []string {
	i := commandIndex(app, args)
	if i >= len(args) {
		return args
	}
	cmdStart := i
	cmd := app.Command(args[i])
	if cmd == nil || cmd.SkipFlagParsing {
		return args
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
	return append(out, positional...)
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

// unknownCommand returns the command named in args when nsbox has none
// of that name.
func unknownCommand(app *cli.App, args []string) (string, bool) {
	i := commandIndex(app, args)
	if i >= len(args) || args[i] == "help" || app.Command(args[i]) != nil {
		return "", false
	}
	return args[i], true
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
