package machine

import (
	"bufio"
	"os"
	"strings"
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
		f, err := r.Open(p)
		if err != nil {
			continue
		}
		defer f.Close()
		var o OSRelease
		sc := bufio.NewScanner(f)
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
