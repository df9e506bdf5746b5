package machine

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"github.com/nsbox/nsbox/machine/host"
)

// OSRelease is the part of os-release(5) that nsbox shows.
type OSRelease struct {
	ID       string
	Name     string
	Version  string // VERSION_ID, or the codename for rolling releases
	Codename string
}

// readOSRelease reads os-release from a machine's root without following
// any link out of it.
func readOSRelease(root string) (OSRelease, bool) {
	r, err := os.OpenRoot(root)
	if err != nil {
		return OSRelease{}, false
	}
	defer r.Close()
	for _, p := range []string{"etc/os-release", "usr/lib/os-release"} {
		f, err := openRegular(r, p)
		if err != nil {
			continue
		}
		defer f.Close()
		var o OSRelease
		sc := bufio.NewScanner(io.LimitReader(f, maxMachineFile))
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), "=")
			if !ok {
				continue
			}
			v = strings.Trim(v, `"'`)
			switch k {
			case "ID":
				o.ID = v
			case "PRETTY_NAME":
				o.Name = v
			case "VERSION_ID":
				o.Version = v
			case "VERSION_CODENAME":
				o.Codename = v
			}
		}
		if o.Version == "" {
			o.Version = o.Codename
		}
		return o, true
	}
	return OSRelease{}, false
}

// maxMachineFile is the most nsbox reads of a small file a machine
// controls (os-release, hostname).
const maxMachineFile = 64 << 10

// openRegular opens p inside r for reading, if it is a regular file: a
// machine's root can make any of its files a FIFO, which would block the
// open for ever, or a device.
func openRegular(r *os.Root, p string) (*os.File, error) {
	f, err := r.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: not a regular file", p)
	}
	return f, nil
}

// readSmall reads the regular file p inside r, at most maxMachineFile bytes.
func readSmall(r *os.Root, p string) ([]byte, error) {
	return host.ReadSmallInRoot(r, p, maxMachineFile)
}
