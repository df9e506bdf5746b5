package machine

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseEnv(t *testing.T) {
	here := map[string]string{"FROM_HOST": "h v", "EMPTY": ""}
	getenv := func(k string) (string, bool) { v, ok := here[k]; return v, ok }
	got, err := ParseEnv([]string{"A=1", "B=x=y", "ML=a\nb\tc", "FROM_HOST", "EMPTY", "A=2", "_u9="}, getenv)
	want := []string{"B=x=y", "ML=a\nb\tc", "FROM_HOST=h v", "EMPTY=", "A=2", "_u9="}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("ParseEnv: %q, %v; want %q", got, err, want)
	}
	for spec, says := range map[string]string{
		"1A=b":      "NAME=VALUE",
		"=b":        "NAME=VALUE",
		"A-B=c":     "NAME=VALUE",
		"A B=c":     "NAME=VALUE",
		"UNSET":     "is not set here",
		"A=\x1b[2J": "control character U+001B",
		"A=\r":      "control character U+000D",
		"A=\xff":    "invalid UTF-8",
		"A=\u0085":  "control character",
	} {
		_, err := ParseEnv([]string{"OK=1", spec}, getenv)
		if !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), says) || strings.ContainsAny(err.Error(), "\x1b\r\n") {
			t.Errorf("--env %q: %v; want one line saying %q", spec, err, says)
		}
	}
}

func TestValidateWorkdir(t *testing.T) {
	for in, want := range map[string]string{"": "", "/srv/app/": "/srv/app", "/a/../b": "/b", "/..": "/"} {
		if got, err := ValidateWorkdir(in); err != nil || got != want {
			t.Errorf("ValidateWorkdir(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"srv", "./x", "~/x", "/a\nb"} {
		if _, err := ValidateWorkdir(bad); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("ValidateWorkdir(%q): %v, want an invalid option", bad, err)
		}
	}
}

func TestWithEnvReplacesDefaults(t *testing.T) {
	got := withEnv([]string{"TERM=xterm", "PATH=/bin"}, []string{"TERM=dumb", "X=1"})
	if want := []string{"PATH=/bin", "TERM=dumb", "X=1"}; !slices.Equal(got, want) {
		t.Errorf("withEnv: %q, want %q", got, want)
	}
}

func TestLoginShellArgv(t *testing.T) {
	if got := loginShellArgv("", false); got[4] != "root" || got[5] != "" {
		t.Errorf("root's login shell: %q", got)
	}
	if got := loginShellArgv("bob", true); got[4] != "bob" || got[5] != "keep" {
		t.Errorf("bob's login shell in a chosen directory: %q", got)
	}
}
