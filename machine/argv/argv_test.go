package argv

import (
	"errors"
	"reflect"
	"testing"

	"github.com/urfave/cli/v2"
)

// testApp has the shape of nsbox's: global flags with and without values,
// commands with flags of both kinds, a command with subcommands.
func testApp() *cli.App {
	return &cli.App{
		Name: "nsbox",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "root-dir"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}},
			&cli.BoolFlag{Name: "debug"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}},
		},
		Commands: []*cli.Command{
			{Name: "create", Flags: []cli.Flag{&cli.StringFlag{Name: "release", Aliases: []string{"r"}}}},
			{Name: "boot", Flags: []cli.Flag{&cli.StringSliceFlag{Name: "bind"}, &cli.StringSliceFlag{Name: "port"}, &cli.BoolFlag{Name: "console"}}},
			{Name: "shell", Flags: []cli.Flag{&cli.StringFlag{Name: "uid"}}},
			{Name: "kill", Flags: []cli.Flag{&cli.StringFlag{Name: "signal", Aliases: []string{"s"}}}},
			{Name: "logs", Flags: []cli.Flag{&cli.IntFlag{Name: "lines", Aliases: []string{"n"}}, &cli.BoolFlag{Name: "follow", Aliases: []string{"f"}}, &cli.StringFlag{Name: "since"}}},
			{Name: "list", Flags: []cli.Flag{&cli.StringFlag{Name: "output", Aliases: []string{"o"}}}},
			{Name: "cache", Subcommands: []*cli.Command{
				{Name: "list", Flags: []cli.Flag{&cli.StringFlag{Name: "output", Aliases: []string{"o"}}}},
				{Name: "remove"},
			}},
			{Name: "snapshot", Flags: []cli.Flag{&cli.BoolFlag{Name: "live"}}, Action: func(*cli.Context) error { return nil },
				Subcommands: []*cli.Command{{Name: "list", Flags: []cli.Flag{&cli.StringFlag{Name: "output", Aliases: []string{"o"}}}}}},
		},
	}
}

func TestHoist(t *testing.T) {
	app := testApp()
	for _, tc := range []struct{ in, want []string }{
		{[]string{"nsbox", "create", "web", "--release", "trixie"}, []string{"nsbox", "create", "--release", "trixie", "web"}},
		{[]string{"nsbox", "--root-dir", "/x", "boot", "web", "--bind", "/a:/b", "--console"}, []string{"nsbox", "--root-dir", "/x", "boot", "--bind", "/a:/b", "--console", "web"}},
		{[]string{"nsbox", "shell", "web", "--uid", "u", "--", "ls", "-l"}, []string{"nsbox", "shell", "--uid", "u", "web", "--", "ls", "-l"}},
		{[]string{"nsbox", "shell", "web", "--", "sh", "--version"}, []string{"nsbox", "shell", "web", "--", "sh", "--version"}},
		{[]string{"nsbox", "list", "--output=json"}, []string{"nsbox", "list", "--output=json"}},
		{[]string{"nsbox", "-v"}, []string{"nsbox", "-v"}},
		{[]string{"nsbox", "cache", "list", "--output", "json"}, []string{"nsbox", "cache", "list", "--output", "json"}},
		{[]string{"nsbox", "cache", "remove", "bookworm", "-q"}, []string{"nsbox", "-q", "cache", "remove", "bookworm"}},
		{[]string{"nsbox", "snapshot", "web", "s1", "--live"}, []string{"nsbox", "snapshot", "--live", "web", "s1"}},
		{[]string{"nsbox", "snapshot", "list", "web", "-o", "json"}, []string{"nsbox", "snapshot", "list", "-o", "json", "web"}},
		{[]string{"nsbox", "create", "web", "-q", "--release", "trixie", "--root-dir", "/x"}, []string{"nsbox", "-q", "--root-dir", "/x", "create", "--release", "trixie", "web"}},
		{[]string{"nsbox", "-v", "list", "--output", "json", "--debug"}, []string{"nsbox", "-v", "--debug", "list", "--output", "json"}},
		// Values that look like flags but are none are values.
		{[]string{"nsbox", "kill", "web", "--signal", "-9"}, []string{"nsbox", "kill", "--signal", "-9", "web"}},
		{[]string{"nsbox", "shell", "web", "--", "ls", "--color"}, []string{"nsbox", "shell", "web", "--", "ls", "--color"}},
		{[]string{"nsbox", "shell", "web", "--", "sh", "-c"}, []string{"nsbox", "shell", "web", "--", "sh", "-c"}},
		{[]string{"nsbox", "logs", "web", "--since=-1h"}, []string{"nsbox", "logs", "--since=-1h", "web"}},
	} {
		if got, err := Hoist(app, tc.in); err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Hoist(%q)\n got %q, %v\nwant %q", tc.in, got, err, tc.want)
		}
	}
}

// A value-taking flag with nothing after it must not take the machine
// name as its value: "kill web --signal" is "--signal needs a value", not
// "unknown signal web".
func TestHoistMissingValue(t *testing.T) {
	app := testApp()
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"kill", "web", "--signal"}, "--signal"},
		{[]string{"logs", "web", "-n"}, "-n"},
		{[]string{"create", "web", "--release"}, "--release"},
		{[]string{"boot", "web", "--bind"}, "--bind"},
		{[]string{"boot", "web", "--port"}, "--port"},
		{[]string{"shell", "web", "--uid", "--", "id"}, "--uid"},
		{[]string{"logs", "web", "-n", "-f"}, "-n"},
		{[]string{"list", "--output"}, "--output"},
		{[]string{"list", "--root-dir"}, "--root-dir"},
		{[]string{"--root-dir"}, "--root-dir"},
		{[]string{"cache", "list", "-o"}, "-o"},
	} {
		_, err := Hoist(app, append([]string{"nsbox"}, tc.args...))
		var mv *MissingValueError
		if !errors.As(err, &mv) || mv.Flag != tc.flag || err.Error() != "flag "+tc.flag+" needs a value" {
			t.Errorf("%q: %v; want flag %s needs a value", tc.args, err, tc.flag)
		}
	}
}

func TestUnknownCommand(t *testing.T) {
	app := testApp()
	for _, tc := range []struct {
		args []string
		want string // "" for none
	}{
		{[]string{"bogus"}, "bogus"},
		{[]string{"cache", "lst"}, "cache lst"},
		{[]string{"cache", "-q", "lst"}, "cache lst"},
		{[]string{"help", "bogus"}, "bogus"},
		{[]string{"--root-dir", "/x", "bogus"}, "bogus"},
		// Help is no unknown command.
		{[]string{"cache", "--help"}, ""},
		{[]string{"help", "cache"}, ""},
		{[]string{"cache", "list", "--help"}, ""},
		{[]string{"cache", "help"}, ""},
		{[]string{"cache"}, ""},
		{[]string{"-q", "cache", "list"}, ""},
		{[]string{"--root-dir", "/x"}, ""},
		{[]string{"list", "bogus"}, ""},
		// A command that acts itself takes a word that is no subcommand.
		{[]string{"snapshot", "web"}, ""},
		{[]string{"snapshot", "--live", "web", "s1"}, ""},
		{[]string{"snapshot", "list", "web"}, ""},
	} {
		name, unknown := UnknownCommand(app, append([]string{"nsbox"}, tc.args...))
		if unknown != (tc.want != "") || name != tc.want {
			t.Errorf("UnknownCommand(%q) = %q, %v; want %q", tc.args, name, unknown, tc.want)
		}
	}
}

func TestCompletingValue(t *testing.T) {
	app := testApp()
	const req = "--generate-bash-completion"
	for _, tc := range []struct {
		in   []string
		flag string
		ok   bool
	}{
		{[]string{"nsbox", "boot", "--bind", req}, "--bind", true},
		{[]string{"nsbox", "boot", "web", "--port", req}, "--port", true},
		{[]string{"nsbox", "--root-dir", req}, "--root-dir", true},
		{[]string{"nsbox", "boot", "--root-dir", req}, "--root-dir", true},
		{[]string{"nsbox", "cache", "list", "-o", req}, "-o", true},
		// A flag without a value, a machine name, nothing to complete.
		{[]string{"nsbox", "boot", "--console", req}, "", false},
		{[]string{"nsbox", "boot", "web", req}, "", false},
		{[]string{"nsbox", "boot", "--bind", "/a", req}, "", false},
		{[]string{"nsbox", "boot", "--bind"}, "", false},
		{[]string{"nsbox", "boot", "--", req}, "", false},
	} {
		flag, ok := CompletingValue(app, tc.in)
		if flag != tc.flag || ok != tc.ok {
			t.Errorf("CompletingValue(%q) = %q, %v; want %q, %v", tc.in, flag, ok, tc.flag, tc.ok)
		}
	}
}
