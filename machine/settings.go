package machine

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Bind is a host directory made visible inside a machine.
type Bind struct {
	Source   string `json:"source"`
	Dest     string `json:"dest"`
	Options  string `json:"options,omitempty"` // nspawn's bind options: rbind, norbind, idmap, ...
	ReadOnly bool   `json:"read_only"`
}

// ParseBind reads nspawn's SRC[:DST[:OPTS]] form. A relative SRC is refused:
// the settings file must mean the same thing from any directory.
func ParseBind(spec string, readOnly bool) (Bind, error) {
	parts := strings.SplitN(spec, ":", 3)
	b := Bind{Source: parts[0], Dest: parts[0], ReadOnly: readOnly}
	if len(parts) > 1 && parts[1] != "" {
		b.Dest = parts[1]
	}
	if len(parts) > 2 {
		b.Options = parts[2]
	}
	if !filepath.IsAbs(b.Source) || !filepath.IsAbs(b.Dest) {
		return Bind{}, fmt.Errorf("%w: bind %q: source and destination must be absolute paths", ErrInvalidOption, spec)
	}
	b.Source, b.Dest = filepath.Clean(b.Source), filepath.Clean(b.Dest)
	return b, nil
}

// String is the SRC:DST[:OPTS] form nspawn and .nspawn files take.
func (b Bind) String() string {
	s := b.Source + ":" + b.Dest
	if b.Options != "" {
		s += ":" + b.Options
	}
	return s
}

// withIDMap returns the binds as nspawn should mount them: under private
// users a plain bind shows host files as owned by nobody and refuses the
// machine's root, so binds without options of their own get "idmap", which
// maps host root to the machine's root.
func withIDMap(binds []Bind, privateUsers bool) []Bind {
	out := make([]Bind, len(binds))
	for i, b := range binds {
		if privateUsers && b.Options == "" {
			b.Options = "idmap"
		}
		out[i] = b
	}
	return out
}

// BootOptions are the settings a machine boots with. They are remembered
// in /etc/systemd/nspawn/NAME.nspawn, which machinectl reads too.
type BootOptions struct {
	// Network is "veth" (default), "none" (private, loopback only), "host",
	// "bridge:BR" or "zone:Z".
	Network string `json:"network"`
	Binds   []Bind `json:"binds,omitempty"`
	// PrivateUsers maps the machine's users to an unused host range, the
	// only setting under which nspawn is a security boundary.
	PrivateUsers bool `json:"private_users"`
	// Ports forwards host ports to the machine: [tcp|udp:]HOST[:MACHINE].
	Ports []string `json:"ports,omitempty"`
}

// ValidatePort checks a --port value as nspawn takes it.
func ValidatePort(spec string) error {
	s := spec
	if p, rest, ok := strings.Cut(s, ":"); ok && (p == "tcp" || p == "udp") {
		s = rest
	}
	parts := strings.Split(s, ":")
	if len(parts) > 2 {
		return fmt.Errorf("%w: port %q (use [tcp|udp:]HOST[:MACHINE])", ErrInvalidOption, spec)
	}
	for _, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%w: port %q (use [tcp|udp:]HOST[:MACHINE], ports 1-65535)", ErrInvalidOption, spec)
		}
	}
	return nil
}

// DefaultBootOptions are what a machine gets before anyone says otherwise.
func DefaultBootOptions() BootOptions {
	return BootOptions{Network: "veth", PrivateUsers: true}
}

// ValidateNetwork checks a --network value.
func ValidateNetwork(n string) error {
	switch {
	case n == "veth", n == "none", n == "host":
		return nil
	case strings.HasPrefix(n, "bridge:") && len(n) > len("bridge:"),
		strings.HasPrefix(n, "zone:") && len(n) > len("zone:"):
		return nil
	}
	return fmt.Errorf("%w: network %q (use veth, none, host, bridge:BR or zone:Z)", ErrInvalidOption, n)
}

// SettingsFile renders o in systemd.nspawn(5) format.
func (o BootOptions) SettingsFile() string {
	var b strings.Builder
	b.WriteString("# Written by nsbox; systemd-nspawn@.service and machinectl read it too.\n")
	b.WriteString("[Exec]\nBoot=yes\n")
	if o.PrivateUsers {
		b.WriteString("PrivateUsers=pick\n")
	} else {
		b.WriteString("PrivateUsers=no\n")
	}
	b.WriteString("\n[Files]\n")
	if o.PrivateUsers {
		b.WriteString("PrivateUsersOwnership=auto\n")
	}
	for _, bd := range withIDMap(o.Binds, o.PrivateUsers) {
		if bd.ReadOnly {
			fmt.Fprintf(&b, "BindReadOnly=%s\n", bd)
		} else {
			fmt.Fprintf(&b, "Bind=%s\n", bd)
		}
	}
	b.WriteString("\n[Network]\n")
	switch {
	case o.Network == "none":
		b.WriteString("Private=yes\nVirtualEthernet=no\n")
	case o.Network == "host":
		b.WriteString("Private=no\nVirtualEthernet=no\n")
	case strings.HasPrefix(o.Network, "bridge:"):
		fmt.Fprintf(&b, "Bridge=%s\n", strings.TrimPrefix(o.Network, "bridge:"))
	case strings.HasPrefix(o.Network, "zone:"):
		fmt.Fprintf(&b, "Zone=%s\n", strings.TrimPrefix(o.Network, "zone:"))
	default:
		b.WriteString("VirtualEthernet=yes\n")
	}
	for _, p := range o.Ports {
		fmt.Fprintf(&b, "Port=%s\n", p)
	}
	return b.String()
}

// ParseSettingsFile reads the subset of systemd.nspawn(5) that nsbox
// writes. Unknown keys are kept out of BootOptions, not refused: a user may
// have added settings of their own, which nspawn@.service honours.
func ParseSettingsFile(text string) (BootOptions, error) {
	o := DefaultBootOptions()
	section := ""
	private, veth := false, false
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' && line[len(line)-1] == ']' {
			section = line[1 : len(line)-1]
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return o, fmt.Errorf("line %d: %q is not KEY=VALUE", n, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch section + "." + k {
		case "Exec.PrivateUsers":
			o.PrivateUsers = v != "no" && v != "false" && v != "0"
		case "Files.Bind", "Files.BindReadOnly":
			b, err := ParseBind(v, k == "BindReadOnly")
			if err != nil {
				return o, fmt.Errorf("line %d: %w", n, err)
			}
			o.Binds = append(o.Binds, b)
		case "Network.Private":
			private = v == "yes" || v == "true" || v == "1"
		case "Network.VirtualEthernet":
			veth = v == "yes" || v == "true" || v == "1"
			if !veth && !private {
				o.Network = "host"
			}
		case "Network.Bridge":
			o.Network = "bridge:" + v
		case "Network.Zone":
			o.Network = "zone:" + v
		case "Network.Port":
			if err := ValidatePort(v); err != nil {
				return o, fmt.Errorf("line %d: %w", n, err)
			}
			o.Ports = append(o.Ports, v)
		}
	}
	if private && !veth && !strings.Contains(o.Network, ":") {
		o.Network = "none"
	}
	return o, sc.Err()
}

// readSettings loads the remembered options of a machine, or the defaults
// when it has never been booted by nsbox.
func readSettings(path string) (BootOptions, bool, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return DefaultBootOptions(), false, nil
	}
	if err != nil {
		return BootOptions{}, false, err
	}
	o, err := ParseSettingsFile(string(b))
	if err != nil {
		return o, true, fmt.Errorf("%s: %w", path, err)
	}
	return o, true, nil
}

// writeFileAtomic writes data to path through a temporary file in the same
// directory and a rename, so readers never see half a file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".#"+filepath.Base(path)+".")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Chmod(mode)
	}
	if werr == nil {
		werr = f.Sync()
	}
	if err := f.Close(); werr == nil {
		werr = err
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		_ = os.Remove(tmp)
	}
	return werr
}
