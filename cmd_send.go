package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/nsbox/nsbox/machine"
	"github.com/nsbox/nsbox/remote"
)

func sendCommand() *cli.Command {
	return &cli.Command{
		Name: "send", Usage: "copy a stopped machine to another host through ssh", ArgsUsage: "NAME [USER@]HOST[:NEWNAME]",
		Description: "The machine's tree (as the machine sees it), its settings file, limits,\n" +
			"image record and autostart state go to nsbox on HOST, which runs nsbox\n" +
			"receive through ssh (your ssh config, agent and known hosts, as with -H).\n" +
			"HOST checks the name and the settings before a byte of the tree is sent,\n" +
			"stages the tree as .#NEWNAME.*, checks every member as import does and the\n" +
			"stream's SHA-256, and only then makes the machine; an interrupted or failed\n" +
			"send leaves nothing there, and nothing changes here. The copy gets its own\n" +
			"hostname and machine id, as a clone does; with --move it keeps its machine\n" +
			"id (a hostname that was NAME becomes NEWNAME), and the machine is removed\n" +
			"here once HOST has confirmed it stored it.\n" +
			"An IPv6 address goes in brackets: root@[2001:db8::7]:web. See docs/remote.md.\n\n" +
			"   nsbox send web root@web2\n" +
			"   nsbox send web root@web2:web-copy\n" +
			"   nsbox send --move --port 2222 db root@db2",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "move", Usage: "remove the machine here once HOST has it (it keeps its machine id)"},
			&cli.IntFlag{Name: "port", Aliases: []string{"p"}, Usage: "ssh's `PORT` on HOST (default: ssh's config, or 22)"},
			outputFlag,
		},
		Action: sendAction,
	}
}

// receiveCommand is the receiving side of send, run by it through ssh
// (nsbox __remote 2 receive NAME): the stream on stdin, its answers on
// stdout (docs/remote.md). Not for typing.
func receiveCommand() *cli.Command {
	return &cli.Command{
		Name: "receive", Usage: "take a machine that nsbox send streams on stdin (run by send through ssh)", ArgsUsage: "NAME",
		Hidden: true,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("receive takes a machine name (nsbox send runs it through ssh)")
			}
			if term.IsTerminal(int(os.Stdin.Fd())) {
				return usagef("receive reads what nsbox send streams on its stdin, not a terminal (use: nsbox send NAME HOST)")
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			name := c.Args().First()
			if _, err := m.Receive(c.Context, name, os.Stdin, os.Stdout); err != nil {
				return fmt.Errorf("receive %s: %w", name, err)
			}
			return nil
		},
	}
}

// sendResult is send -o json (docs/json.md).
type sendResult struct {
	Name    string `json:"name"`
	Host    string `json:"host"`
	NewName string `json:"new_name"`
	// Mode is what went: "tree" (the whole tree), "upper" (an overlay
	// machine's upper alone: HOST had its base version) or "base" (its
	// base version, then its upper); of a btrfs machine "btrfs" (a btrfs
	// send stream incremental from its base's read-only snapshot, which
	// HOST had received) or "btrfs-base" (that snapshot whole first).
	Mode string `json:"mode"`
	// Bytes is every byte of the streams; BaseBytes those of the base.
	Bytes     int64  `json:"bytes"`
	BaseBytes int64  `json:"base_bytes"`
	SHA256    string `json:"sha256"`
	TimeNs    int64  `json:"time_ns"`
	Moved     bool   `json:"moved"`
	Enabled   bool   `json:"enabled"`
}

// parseDestination reads [USER@]HOST[:NEWNAME]; an IPv6 address goes in
// brackets. NEWNAME is name when not given.
func parseDestination(s, name string, port int) (remote.Host, string, error) {
	hostPart, newName := s, name
	start := strings.LastIndexByte(s, '@') + 1
	if i := strings.IndexByte(s[start:], ']'); strings.HasPrefix(s[start:], "[") && i >= 0 {
		if rest := s[start+i+1:]; rest != "" {
			if !strings.HasPrefix(rest, ":") {
				return remote.Host{}, "", usagef("%q: only :NEWNAME may follow ']' (use [USER@]HOST[:NEWNAME])", s)
			}
			hostPart, newName = s[:start+i+1], rest[1:]
		}
	} else if i := strings.IndexByte(s[start:], ':'); i >= 0 {
		hostPart, newName = s[:start+i], s[start+i+1:]
	}
	if strings.HasPrefix(hostPart, "[") || strings.Contains(hostPart, "@[") {
		// ParseHost takes [ADDR] as it is.
	} else if strings.Count(hostPart, ":") > 0 {
		return remote.Host{}, "", usagef("%q: an IPv6 address goes in brackets", s)
	}
	h, err := remote.ParseHost(hostPart)
	if err != nil {
		return remote.Host{}, "", usagef("%v", err)
	}
	if port != 0 {
		if port < 1 || port > 65535 {
			return remote.Host{}, "", usagef("--port %d: a number from 1 to 65535", port)
		}
		h.Port = port
	}
	if newName == "" {
		return remote.Host{}, "", usagef("%q: an empty name after ':' (use [USER@]HOST[:NEWNAME])", s)
	}
	if err := machine.ValidateName(newName); err != nil {
		return remote.Host{}, "", usagef("%v", err)
	}
	return h, newName, nil
}

func sendAction(c *cli.Context) error {
	if err := checkOutput(c); err != nil {
		return err
	}
	if c.NArg() != 2 {
		return usagef("send takes a machine name and [USER@]HOST[:NEWNAME] (see: nsbox send --help)")
	}
	name := c.Args().Get(0)
	if err := machine.ValidateName(name); err != nil {
		return usagef("%v", err)
	}
	h, newName, err := parseDestination(c.Args().Get(1), name, c.Int("port"))
	if err != nil {
		return err
	}
	s, err := parseRemote(nil, nil)
	if err != nil {
		return err
	}
	s.debug = c.Bool("debug")
	m, err := manager(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	out, err := m.PrepareSend(ctx, name, machine.SendOptions{KeepID: c.Bool("move")})
	if err != nil {
		return fmt.Errorf("send %s: %w", name, err)
	}
	defer out.Close()

	start := time.Now()
	prog := newSendProgress(c)
	defer prog.stop()
	res, err := sendThrough(ctx, s, h, name, newName, out, prog.set)
	prog.stop()
	if err != nil {
		return err
	}
	elapsed := time.Since(start)
	r := sendResult{Name: name, Host: h.String(), NewName: newName, Mode: res.Mode, Bytes: res.BaseBytes + res.Bytes, BaseBytes: res.BaseBytes, SHA256: res.SHA256,
		TimeNs: elapsed.Nanoseconds(), Enabled: out.Enabled()}
	if c.Bool("move") {
		out.Close()
		if err := m.Remove(context.WithoutCancel(ctx), name, false); err != nil {
			return fmt.Errorf("send %s: %s has it as %s, but removing it here failed: %w (remove it: nsbox remove %s)", name, h, newName, err, name)
		}
		r.Moved = true
	}
	if c.String("output") == "json" {
		return writeJSON(os.Stdout, r)
	}
	verb := "sent"
	if r.Moved {
		verb = "moved"
	}
	as := ""
	if newName != name {
		as = " as " + newName
	}
	what := ""
	switch r.Mode {
	case remote.ModeUpper:
		what = ", its changes alone (" + h.String() + " has its base)"
	case remote.ModeBase:
		what = fmt.Sprintf(", its base first (%s, once) and then its changes", humanBytes(r.BaseBytes))
	case remote.ModeBtrfs:
		what = ", its changes alone by btrfs send (" + h.String() + " has its base)"
	case remote.ModeBtrfsBase:
		what = fmt.Sprintf(", by btrfs send: its base first (%s, once) and then its changes", humanBytes(r.BaseBytes))
	}
	fmt.Printf("%s %s to %s%s: %s in %s (%s/s)%s\n", verb, name, h, as, humanBytes(r.Bytes),
		elapsed.Round(100*time.Millisecond), humanBytes(bytesPerSecond(r.Bytes, elapsed)), what)
	return nil
}

func bytesPerSecond(n int64, d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64(float64(n) / d.Seconds())
}

// sendThrough runs "nsbox receive NEWNAME" on h through ssh and streams
// the machine into it. A connection, a remote nsbox or a protocol that
// fails is the *remote.Error of -H, with its exit status; the receiver's
// own refusal (said on its stderr, which passes) is exit status 1.
func sendThrough(ctx context.Context, s *remoteSetup, h remote.Host, name, newName string, out *machine.Outgoing, progress func(int64)) (machine.SendResult, error) {
	sp := s.spec(h, remote.NoTTY, []string{"receive", newName})
	sp.Version = remote.SendProtocol
	inR, inW, err := os.Pipe()
	if err != nil {
		return machine.SendResult{}, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return machine.SendResult{}, err
	}
	sp.Stdin, sp.Stdout = inR, outW
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type ran struct {
		res remote.Result
		err error
	}
	done := make(chan ran, 1)
	go func() {
		res, err := remote.Run(ctx, sp)
		// ssh is gone: the stream's ends here see it.
		inR.Close()
		outW.Close()
		done <- ran{res, err}
	}()
	sres, serr := out.Stream(ctx, inW, outR, progress)
	inW.Close()
	var r ran
	if serr != nil && parent.Err() == nil {
		// Either the receiver failed first (ssh ends with its status,
		// and the stream broke on that), or this side did: then a cut
		// connection is how the receiver learns it.
		select {
		case r = <-done:
		case <-time.After(5 * time.Second):
			cancel()
			<-done
			outR.Close()
			return sres, fmt.Errorf("send %s: %w", name, serr)
		}
	} else {
		r = <-done
	}
	outR.Close()
	if r.err != nil {
		return sres, r.err
	}
	code, rerr := remote.Explain(context.WithoutCancel(ctx), sp, r.res, buildVersion())
	switch {
	case rerr != nil:
		return sres, rerr
	case serr != nil && code == remote.ExitConnect:
		// ssh's own status: the connection broke mid-stream (ssh said
		// how above); -H's exit status for it.
		return sres, &remote.Error{Host: h, Status: remote.ExitConnect, Msg: fmt.Sprintf(
			"send %s: the connection to %s broke before it had the machine; nothing changed here", name, h)}
	case serr != nil && errors.Is(serr, machine.ErrRefused) && code == exitExists:
		// The name is taken there: the status a create to a taken name
		// has, so that a fleet tells it from a failure.
		return sres, fmt.Errorf("send %s: %s refused it (it said why above): %w", name, h, machine.ErrExists)
	case serr != nil && errors.Is(serr, machine.ErrRefused):
		return sres, fmt.Errorf("send %s: %s refused it (it said why above)%s", name, h, statusText(code))
	case serr != nil && parent.Err() == nil && code != 0:
		// The receiver failed first (said above); the send broke on it.
		return sres, fmt.Errorf("send %s: %s failed to take it (it said why above)%s", name, h, statusText(code))
	case serr != nil:
		return sres, fmt.Errorf("send %s: %w", name, serr)
	case code != 0:
		return sres, fmt.Errorf("send %s: %s ended with exit status %d after it confirmed", name, h, code)
	}
	return sres, nil
}

func statusText(code int) string {
	if code == 0 {
		return ""
	}
	return ", exit status " + strconv.Itoa(code)
}

// sendProgress draws bytes and rate on a terminal, five times a second.
type sendProgress struct {
	mu    sync.Mutex
	bytes int64
	start time.Time
	quit  chan struct{}
	once  sync.Once
	drawn bool
}

func newSendProgress(c *cli.Context) *sendProgress {
	p := &sendProgress{start: time.Now(), quit: make(chan struct{})}
	if quiet(c) || c.String("output") == "json" || !term.IsTerminal(int(os.Stderr.Fd())) {
		close(p.quit)
		p.once.Do(func() {})
		return p
	}
	go func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.quit:
				return
			case <-t.C:
				p.mu.Lock()
				n := p.bytes
				p.mu.Unlock()
				if n == 0 {
					continue
				}
				fmt.Fprintf(os.Stderr, "\r\033[Ksent %s (%s/s)", humanBytes(n), humanBytes(bytesPerSecond(n, time.Since(p.start))))
				p.mu.Lock()
				p.drawn = true
				p.mu.Unlock()
			}
		}
	}()
	return p
}

func (p *sendProgress) set(n int64) {
	p.mu.Lock()
	p.bytes = n
	p.mu.Unlock()
}

func (p *sendProgress) stop() {
	p.once.Do(func() {
		close(p.quit)
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.drawn {
			fmt.Fprint(os.Stderr, "\r\033[K")
		}
	})
}
