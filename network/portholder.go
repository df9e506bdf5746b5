package network

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// PortUser is a host process that holds a port: it listens on it (TCP)
// or has bound it (UDP).
type PortUser struct {
	PID     int    // 0 when no process could be named
	Command string // its comm, as the kernel reports it
}

// String names the process for a message: "nginx (pid 812)".
func (u PortUser) String() string {
	if u.PID == 0 {
		return "a socket of no process nsbox can see"
	}
	return fmt.Sprintf("%s (pid %d)", u.Command, u.PID)
}

// PortHolder reports who in this network namespace listens on (tcp) or has
// bound (udp) port, on any address, IPv4 or IPv6: the sockets are read
// from /proc/net, and the process that owns one is found by its inode
// among every process's open files.
func PortHolder(proto string, port int) (PortUser, bool) {
	return portHolder("/proc", proto, port)
}

func portHolder(proc, proto string, port int) (PortUser, bool) {
	inodes := map[string]bool{}
	for _, f := range []string{proto, proto + "6"} {
		for _, ino := range boundSockets(filepath.Join(proc, "net", f), proto, port) {
			inodes[ino] = true
		}
	}
	if len(inodes) == 0 {
		return PortUser{}, false
	}
	pids, _ := os.ReadDir(proc)
	for _, p := range pids {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join(proc, p.Name(), "fd"))
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(proc, p.Name(), "fd", fd.Name()))
			if err != nil {
				continue
			}
			ino, ok := strings.CutPrefix(target, "socket:[")
			if !ok || !inodes[strings.TrimSuffix(ino, "]")] {
				continue
			}
			comm, _ := os.ReadFile(filepath.Join(proc, p.Name(), "comm"))
			return PortUser{PID: pid, Command: strings.TrimSpace(string(comm))}, true
		}
	}
	return PortUser{}, true
}

// boundSockets returns the inodes of the sockets in a /proc/net/{tcp,udp}
// table whose local port is port: listening ones for TCP (state 0A),
// unconnected ones for UDP (no remote port).
func boundSockets(table, proto string, port int) []string {
	f, err := os.Open(table)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	s := bufio.NewScanner(f)
	s.Scan() // the header
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 10 {
			continue
		}
		local, remote, state, inode := fields[1], fields[2], fields[3], fields[9]
		if hexPort(local) != port || inode == "0" {
			continue
		}
		if proto == "tcp" && state != "0A" {
			continue
		}
		if proto == "udp" && hexPort(remote) != 0 {
			continue
		}
		out = append(out, inode)
	}
	return out
}

// hexPort is the port of a /proc/net address, "0100007F:1F90" -> 8080, or
// -1.
func hexPort(addr string) int {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return -1
	}
	n, err := strconv.ParseUint(addr[i+1:], 16, 16)
	if err != nil {
		return -1
	}
	return int(n)
}
