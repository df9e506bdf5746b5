package main

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/nsbox/nsbox/machine"
)

func cpCommand() *cli.Command {
	return &cli.Command{
		Name:      "cp",
		Usage:     "copy files and trees between the host and machines, or between machines",
		ArgsUsage: "SRC DST",
		Description: "SRC and DST are host paths, NAME:PATH in a machine, or - for a tar stream on\n" +
			"stdin (SRC) or stdout (DST). As cp -a: trees are copied whole, with modes,\n" +
			"owners, times, extended attributes, ACLs, hard links and holes; a DST that is\n" +
			"a directory receives SRC under its own name; a file at DST is replaced. A\n" +
			"running machine's paths are what it sees (its mounts included); a stopped\n" +
			"machine is held so that it does not boot meanwhile. Paths resolve inside the\n" +
			"machine: its links never lead to the host's files. Owners keep the ids the\n" +
			"machine sees (host root's files become the machine's root's); --owner gives\n" +
			"every copied entry to one user of the destination machine. Setuid and setgid\n" +
			"bits, file capabilities and device nodes do not leave a machine for the host,\n" +
			"and kernel file systems a machine mounted (proc, sysfs, cgroup, ...) are\n" +
			"neither read nor written.\n\n" +
			"   nsbox cp ./site web:/var/www\n" +
			"   nsbox cp web:/var/log/nginx ./logs\n" +
			"   nsbox cp web:/etc/nginx db:/root/nginx-of-web\n" +
			"   tar -C dir -c . | nsbox cp - web:/srv/data",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "owner", Usage: "give what is copied to `USER[:GROUP]` of the destination machine"},
		},
		BashComplete: completeCopy,
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return usagef("usage: nsbox cp [--owner USER[:GROUP]] SRC DST")
			}
			src, err := machine.ParseCopyEnd(c.Args().Get(0))
			if err != nil {
				return usagef("cp: %v", err)
			}
			dst, err := machine.ParseCopyEnd(c.Args().Get(1))
			if err != nil {
				return usagef("cp: %v", err)
			}
			o := machine.CopyOptions{Owner: c.String("owner")}
			if err := machine.CheckCopy(src, dst, o); err != nil {
				return usagef("cp: %v", err)
			}
			if s, globals := remoteOf(c); s != nil {
				return copyRemote(c, s, globals, src, dst)
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			p := newByteProgress(os.Stderr, quiet(c) || dst.Stream)
			o.Progress = p.update
			res, err := m.Copy(c.Context, src, dst, o)
			p.done()
			if err != nil {
				return fmt.Errorf("cp: %w", err)
			}
			if res.Stripped > 0 {
				logrus.Warnf("cp: %d setuid, setgid or file capability bits of what came from %s were dropped on the way to the host", res.Stripped, src.Machine)
			}
			if res.LinksLost > 0 {
				logrus.Warnf("cp: %d files were copied apart from their hard links (too many open files to keep them by)", res.LinksLost)
			}
			if res.Unsupported > 0 {
				logrus.Warnf("cp: %d extended attributes were not kept: the destination's file system does not take them", res.Unsupported)
			}
			return nil
		},
	}
}

// completeCopy offers machines as NAME: for either argument.
func completeCopy(c *cli.Context) {
	if c.NArg() >= 2 {
		return
	}
	root := c.String("root-dir")
	if root == "" {
		root = "/srv"
	}
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") && machine.ValidateName(e.Name()) == nil {
			fmt.Println(e.Name() + ":")
		}
	}
}

// byteProgress is a copy's progress line on a terminal: the bytes so
// far and the rate, once a copy has taken a second, redrawn at most five
// times a second.
type byteProgress struct {
	f     *os.File
	on    bool
	start time.Time
	mu    sync.Mutex
	last  time.Time
	drawn bool
}

func newByteProgress(f *os.File, quiet bool) *byteProgress {
	return &byteProgress{f: f, on: !quiet && term.IsTerminal(int(f.Fd())), start: time.Now()}
}

func (p *byteProgress) update(n int64) {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if now.Sub(p.start) < time.Second || now.Sub(p.last) < 200*time.Millisecond {
		return
	}
	p.last = now
	rate := float64(n) / now.Sub(p.start).Seconds()
	fmt.Fprintf(p.f, "\r\033[Kcopying: %s (%s/s)", humanBytes(n), humanBytes(int64(rate)))
	p.drawn = true
}

func (p *byteProgress) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.f, "\r\033[K")
	}
}
