package machine

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestCheckRun(t *testing.T) {
	for _, tc := range []struct {
		o    RunOptions
		want string // "" for valid
	}{
		{RunOptions{Release: "bookworm", Argv: []string{"true"}}, ""},
		{RunOptions{From: "web", Argv: []string{"true"}}, ""},
		{RunOptions{Release: "bookworm", Argv: []string{"true"}, Network: "host"}, ""},
		{RunOptions{Release: "bookworm", Argv: []string{"true"}, Boot: true, Network: "bridge:br0"}, ""},
		{RunOptions{Release: "bookworm"}, "no command"},
		{RunOptions{Argv: []string{"true"}}, "--release R"},
		{RunOptions{Release: "bookworm", From: "web", Argv: []string{"true"}}, "--from"},
		{RunOptions{Distro: "debian", From: "web", Argv: []string{"true"}}, "--from"},
		{RunOptions{Release: "bookworm", Argv: []string{"true"}, Network: "veth"}, "needs --boot"},
		{RunOptions{Release: "bookworm", Argv: []string{"true"}, Boot: true, Network: "wifi"}, "network"},
	} {
		err := CheckRun(tc.o)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", tc.o, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalidOption)):
			t.Errorf("%+v: %v, want an invalid option saying %q", tc.o, err, tc.want)
		}
	}
}

func TestRunNspawnArgs(t *testing.T) {
	o := RunOptions{Release: "bookworm", Argv: []string{"sh", "-c", "exit 7"},
		Binds: []Bind{{Source: "/srv/data", Dest: "/data", ReadOnly: true}}}
	args := runNspawnArgs("run-1", o, false, false)
	for _, want := range []string{"--machine=run-1", "--register=no", "--keep-unit", "--private-users=pick",
		"--private-users-ownership=auto", "--as-pid2", "--private-network", "--pipe", "--bind-ro=/srv/data:/data:idmap",
		"--link-journal=no", "--settings=no"} {
		if !slices.Contains(args, want) {
			t.Errorf("%q lacks %s", args, want)
		}
	}
	i := slices.Index(args, "--")
	if i < 0 || !slices.Equal(args[i+1:], []string{"/bin/sh", "-c", `"$@"; exit $?`, "sh", "sh", "-c", "exit 7"}) {
		t.Errorf("the command is not CMD under sh after --: %q", args)
	}
	if slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--directory") || a == "--boot" }) {
		t.Errorf("%q: the helper adds the directory, and this is no boot", args)
	}
	// A terminal, the host's network, systemd to make nspawn a scope.
	args = runNspawnArgs("run-1", RunOptions{Argv: []string{"true"}, Network: "host"}, true, true)
	for _, no := range []string{"--pipe", "--private-network", "--keep-unit"} {
		if slices.Contains(args, no) {
			t.Errorf("%q has %s", args, no)
		}
	}
}

func TestBootNspawnArgs(t *testing.T) {
	for _, registered := range []bool{false, true} {
		args := bootNspawnArgs("run-1", RunOptions{Boot: true}, registered)
		for _, want := range []string{"--boot", "--machine=run-1", "--private-network", "--link-journal=no", "--private-users=pick"} {
			if !slices.Contains(args, want) {
				t.Errorf("registered %v: %q lacks %s", registered, args, want)
			}
		}
		if slices.Contains(args, "--link-journal=try-guest") || slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--directory") }) {
			t.Errorf("registered %v: %q", registered, args)
		}
		// Registered, machined makes the machine a scope of its own; a
		// unit's --keep-unit would leave it in nsbox's.
		if slices.Contains(args, "--keep-unit") == registered {
			t.Errorf("registered %v: --keep-unit in %q", registered, args)
		}
		if slices.Contains(args, "--register=no") == registered {
			t.Errorf("registered %v: --register=no in %q", registered, args)
		}
	}
}
