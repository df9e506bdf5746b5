package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nsbox/nsbox/machine"
	"github.com/nsbox/nsbox/remote"
	"github.com/urfave/cli/v2"
)

// The completion scripts ask nsbox itself what fits next (urfave/cli's
// --generate-bash-completion), so they follow the commands as they change
// and complete machine names from the root directory.
const (
	// bashCompletion is the script of nsbox completion bash.
	bashCompletion = `# nsbox completion for bash: source <(nsbox completion bash)
_nsbox() {
	local cur=${COMP_WORDS[COMP_CWORD]} IFS=$'\n'
	local words=("${COMP_WORDS[@]:1:COMP_CWORD-1}")
	COMPREPLY=($(compgen -W "$("${COMP_WORDS[0]}" "${words[@]}" --generate-bash-completion 2>/dev/null | cut -d: -f1)" -- "$cur"))
}
complete -o default -F _nsbox nsbox
`

	// zshCompletion is the script of nsbox completion zsh.
	// Sourced, it registers _nsbox; autoloaded from $fpath as _nsbox (the
	// package's vendor-completions file), its body is the function's
	// first call, which defines _nsbox and completes.
	zshCompletion = `#compdef nsbox
# nsbox completion for zsh: source <(nsbox completion zsh), or as _nsbox in $fpath
_nsbox() {
	local -a opts
	opts=("${(@f)$(${words[1]} ${words[2,CURRENT-1]} --generate-bash-completion 2>/dev/null)}")
	_describe 'nsbox' opts
}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
	_nsbox "$@"
else
	compdef _nsbox nsbox
fi
`

	// fishCompletion is the script of nsbox completion fish.
	fishCompletion = `# nsbox completion for fish: nsbox completion fish | source
complete -c nsbox -f -a '(set -l t (commandline -opc); $t[1] $t[2..-1] --generate-bash-completion 2>/dev/null | string replace -r ":.*" "")'
`
)

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash, zsh or fish)",
		ArgsUsage: "bash|zsh|fish",
		Description: "   source <(nsbox completion bash)      # or put it in /etc/bash_completion.d/nsbox\n" +
			"   nsbox completion fish > ~/.config/fish/completions/nsbox.fish",
		Action: func(c *cli.Context) error {
			scripts := map[string]string{"bash": bashCompletion, "zsh": zshCompletion, "fish": fishCompletion}
			s, ok := scripts[c.Args().First()]
			if c.NArg() != 1 || !ok {
				return usagef("completion takes one shell: bash, zsh or fish")
			}
			fmt.Print(s)
			return nil
		},
	}
}

func manCommand() *cli.Command {
	return &cli.Command{
		Name:  "man",
		Usage: "print nsbox's manual page (nsbox man > /usr/local/share/man/man1/nsbox.1)",
		Action: func(c *cli.Context) error {
			fmt.Print(manPage(c.App))
			return nil
		},
	}
}

// manSection is the manual section of nsbox's page: 1, user commands, as
// for machinectl(1) and systemd-nspawn(1), which also need root for most
// of what they do.
const manSection = 1

// completeMachines offers the machine names under the root directory, for
// commands that take one. It reads the directory only: completion must be
// fast and must not need root.
func completeMachines(c *cli.Context) {
	if c.NArg() > 0 && c.Command.Name != "boot" {
		return
	}
	// A command that takes a machine or a subcommand (snapshot) offers both.
	for _, s := range c.Command.Subcommands {
		if !s.Hidden && s.Name != "help" {
			fmt.Println(s.Name)
		}
	}
	root := c.String("root-dir")
	if root == "" {
		root = "/srv"
	}
	if c.Command.Name == "status" {
		// status reports machinectl's images too.
		for _, n := range imageNames(machine.DefaultPaths().ImagesDir) {
			fmt.Println(n)
		}
	}
	ents, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		// A machine is ROOT/NAME, a link into the store (root's and
		// closed: the link says enough), or a tree of an earlier nsbox.
		if e.Type()&os.ModeSymlink != 0 {
			if t, err := os.Readlink(filepath.Join(root, e.Name())); err == nil && t == machine.StoreName+"/"+e.Name() {
				fmt.Println(e.Name())
			}
			continue
		}
		if !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(root, e.Name(), "etc", "os-release")); err == nil {
			fmt.Println(e.Name())
		} else if _, err := os.Stat(filepath.Join(root, e.Name(), "usr", "lib", "os-release")); err == nil {
			fmt.Println(e.Name())
		}
	}
}

// completeFlagValue offers values for flag, whose value is being
// completed: the host's ordinary users after --bind-user, create's ways
// to verify after --verify, export's formats after --format, the hosts of
// the user's ssh config after -H, nothing after the others (the shell then
// completes file names).
func completeFlagValue(flag string) {
	if flag == "-H" || flag == "--host" {
		for _, h := range sshConfigHosts() {
			fmt.Println(h)
		}
		return
	}
	if flag == "--format" {
		fmt.Println("tar")
		fmt.Println("oci")
		return
	}
	if flag == "--verify" {
		fmt.Println(machine.VerifyChecksum + "\n" + machine.VerifySignature + "\n" + machine.VerifyNo)
		return
	}
	if flag != "--bind-user" {
		return
	}
	b, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return
	}
	for _, name := range machine.OrdinaryUsers(string(b)) {
		fmt.Println(name)
	}
}

// sshConfigHosts are the host names of Host lines in ~/.ssh/config that
// are not patterns, those -H would take.
func sshConfigHosts() []string {
	home, err := os.UserHomeDir()
	if err != nil {
		return nil
	}
	b, err := os.ReadFile(home + "/.ssh/config")
	if err != nil {
		return nil
	}
	var hosts []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.EqualFold(f[0], "Host") {
			continue
		}
		for _, h := range f[1:] {
			if _, err := remote.ParseHost(h); err == nil {
				hosts = append(hosts, h)
			}
		}
	}
	return hosts
}
