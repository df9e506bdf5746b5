package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/urfave/cli/v2"

	"github.com/nsbox/nsbox/machine"
	"github.com/nsbox/nsbox/remote"
)

// maxListAnswer caps what one host's list may answer (its JSON).
const maxListAnswer = 64 << 20

// cappedBuffer keeps up to max bytes and says when more came.
type cappedBuffer struct {
	buf  bytes.Buffer
	max  int
	over bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if b.buf.Len()+len(p) > b.max {
		b.over = true
		return 0, fmt.Errorf("more than %d bytes", b.max)
	}
	return b.buf.Write(p)
}

// listHosts is list of several hosts: each host's list -o json, asked in
// parallel, in one table with a HOST column (a "host" field in JSON).
// A host that fails is reported on stderr and the others are listed;
// the exit status is then 1.
func listHosts(c *cli.Context, s *remoteSetup, globals []string) error {
	args := append(append([]string{}, globals...), "list", "--output", "json")
	if c.Bool("usage") {
		args = append(args, "--usage")
	}
	type answer struct {
		out    cappedBuffer
		stderr cappedBuffer
		err    error
	}
	answers := make([]*answer, len(s.hosts))
	var wg sync.WaitGroup
	for i, h := range s.hosts {
		a := &answer{out: cappedBuffer{max: maxListAnswer}, stderr: cappedBuffer{max: 1 << 20}}
		answers[i] = a
		wg.Add(1)
		go func() {
			defer wg.Done()
			sp := s.spec(h, remote.NoTTY, args)
			sp.Stdin, sp.Stdout, sp.Stderr = nil, &a.out, &a.stderr
			res, err := remote.Run(c.Context, sp)
			if err != nil {
				a.err = err
				return
			}
			code, err := remote.Explain(c.Context, sp, res, buildVersion())
			switch {
			case a.out.over:
				a.err = fmt.Errorf("%s: list answered more than %d bytes", h, maxListAnswer)
			case err != nil:
				a.err = err
			case code != 0:
				a.err = fmt.Errorf("%s: list failed (exit status %d)", h, code)
			}
		}()
	}
	wg.Wait()
	var infos []machine.Info
	var raws []json.RawMessage
	var hosts []string
	failed := 0
	for i, a := range answers {
		h := s.hosts[i].String()
		for _, l := range strings.Split(strings.TrimRight(a.stderr.buf.String(), "\n"), "\n") {
			if l = strings.TrimSuffix(l, "\r"); l != "" {
				fmt.Fprintf(os.Stderr, "%s: %s\n", machine.Printable(h), machine.Printable(l))
			}
		}
		var hostInfos []machine.Info
		var hostRaws []json.RawMessage
		if a.err == nil {
			if err := json.Unmarshal(a.out.buf.Bytes(), &hostRaws); err != nil {
				a.err = fmt.Errorf("%s: list did not answer JSON: %v", h, err)
			} else if err := json.Unmarshal(a.out.buf.Bytes(), &hostInfos); err != nil {
				a.err = fmt.Errorf("%s: list answered JSON nsbox does not read: %v", h, err)
			}
		}
		if a.err != nil {
			failed++
			fmt.Fprintf(os.Stderr, "nsbox: %s\n", machine.Printable(a.err.Error()))
			continue
		}
		for j, r := range hostRaws {
			r = bytes.TrimSpace(r)
			if len(r) < 2 || r[0] != '{' {
				failed++
				fmt.Fprintf(os.Stderr, "nsbox: %s: list answered something other than machines\n", machine.Printable(h))
				break
			}
			name, _ := json.Marshal(h)
			sep := ","
			if bytes.Equal(bytes.TrimSpace(r[1:]), []byte("}")) {
				sep = ""
			}
			raws = append(raws, json.RawMessage(`{"host":`+string(name)+sep+string(r[1:])))
			infos = append(infos, hostInfos[j])
			hosts = append(hosts, h)
		}
	}
	if c.String("output") == "json" {
		if raws == nil {
			raws = []json.RawMessage{}
		}
		if err := writeJSON(os.Stdout, raws); err != nil {
			return err
		}
	} else {
		if hosts == nil {
			hosts = []string{}
		}
		writeTable(os.Stdout, infos, hosts, !c.Bool("no-legend"), c.Bool("usage"))
	}
	if failed > 0 {
		return exitCode(exitError)
	}
	return nil
}
