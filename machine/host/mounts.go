package host

import (
	"bufio"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// MountsUnder lists the mount points at or below dir, deepest first, from
// /proc/self/mountinfo.
func MountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	return mountsUnder(bufio.NewScanner(f), filepath.Clean(dir))
}

func mountsUnder(sc *bufio.Scanner, dir string) []string {
	var out []string
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// unescapeMount undoes the octal escapes (\040 for a space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			n := 0
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				n = n*8 + int(c-'0')
			}
			if ok {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// UnmountUnder detaches every mount at or below dir, deepest first. It
// cleans up what an interrupted debootstrap leaves (proc, sys, devpts).
func UnmountUnder(dir string) {
	for _, mp := range MountsUnder(dir) {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil {
			logrus.Debugf("unmount %s: %v", mp, err)
		}
	}
}
