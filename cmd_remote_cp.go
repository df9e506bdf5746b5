package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"

	"github.com/nsbox/nsbox/machine"
	"github.com/nsbox/nsbox/remote"
)

// copyRemote is cp on another host. Machine paths and streams are the
// remote nsbox's; a path on this host becomes a tar stream made or
// unpacked here and passed through ssh: "nsbox cp ./site web:/srv" is
// this side's tar of ./site into the remote "nsbox cp - web:/srv", and
// "nsbox cp web:/etc ./etc" the remote "nsbox cp web:/etc -" unpacked
// here. The streams are pipes ssh holds itself: a tar that fails here
// cuts the connection, and never ends the stream as if it were whole.
func copyRemote(c *cli.Context, s *remoteSetup, globals []string, src, dst machine.CopyEnd) error {
	h := s.hosts[0]
	args := append(append([]string{}, globals...), "cp")
	if o := c.String("owner"); o != "" {
		args = append(args, "--owner", o)
	}
	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	var (
		sp    remote.Spec
		local = make(chan error, 1)
		ours  *os.File // this side's end, closed once ssh has ended
		ended atomic.Bool
	)
	switch {
	case src.Machine == "" && !src.Stream:
		if _, err := os.Lstat(src.Path); err != nil {
			return fmt.Errorf("cp: cannot stat %s: %s", src.Path, errnoText(err))
		}
		sp = s.spec(h, remote.NoTTY, append(args, "-", dst.String()))
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		defer r.Close()
		sp.Stdin, ours = r, w
		go func() {
			_, err := machine.WriteHostTar(ctx, src.Path, w)
			if err != nil {
				cancel()
			} else {
				w.Close()
			}
			local <- err
		}()
	case dst.Machine == "" && !dst.Stream:
		sp = s.spec(h, remote.NoTTY, append(args, src.String(), "-"))
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		sp.Stdout, ours = w, w
		go func() {
			res, err := machine.ExtractHostTar(ctx, r, dst.Path)
			// What the remote still writes goes nowhere: ssh ends.
			r.Close()
			if err != nil && ended.Load() {
				// The stream ended with ssh: the remote's failure
				// (reported there) cut it short.
				err = errConsequence{err}
			}
			if err == nil && res.Stripped > 0 {
				logrus.Warnf("cp: %d setuid, setgid or file capability bits of what came from %s were dropped on the way to the host", res.Stripped, src.Machine)
			}
			local <- err
		}()
	default:
		sp = s.spec(h, remote.NoTTY, append(args, src.String(), dst.String()))
		local <- nil
	}
	res, err := remote.Run(ctx, sp)
	ended.Store(true)
	if ours != nil {
		ours.Close()
	}
	lerr := <-local
	if err != nil {
		return err
	}
	code, rerr := remote.Explain(ctx, sp, res, buildVersion())
	var cons errConsequence
	switch {
	case lerr != nil && !errors.Is(lerr, syscall.EPIPE) && !errors.As(lerr, &cons):
		// The failure here ended the copy (the remote's end is its
		// consequence); a broken pipe, or a stream cut short, is the
		// remote's ending first.
		return fmt.Errorf("cp: %w", lerr)
	case rerr != nil:
		return rerr
	case code != 0:
		return exitCode(code)
	case lerr != nil:
		return fmt.Errorf("cp: %w", lerr)
	}
	return nil
}

// errConsequence is a failure here that followed the remote's.
type errConsequence struct{ error }

func (e errConsequence) Unwrap() error { return e.error }

// errnoText is a system error's text as cp writes it: "No such file or
// directory".
func errnoText(err error) string {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			break
		}
		err = u
	}
	t := err.Error()
	if t != "" {
		t = strings.ToUpper(t[:1]) + t[1:]
	}
	return t
}
