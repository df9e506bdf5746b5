package machine

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
)

// signalNames are the signals kill takes by name, as kill(1) and
// machinectl spell them (without SIG).
var signalNames = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "KILL": syscall.SIGKILL,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "TERM": syscall.SIGTERM, "CONT": syscall.SIGCONT,
	"STOP": syscall.SIGSTOP, "PWR": syscall.SIGPWR, "WINCH": syscall.SIGWINCH,
}

// ParseSignal reads a signal as kill takes it: a name with or without SIG
// in any case (TERM, sigterm), a number from 1 to 64, or a real-time
// signal as RTMIN+N (SIGRTMIN+N; RTMIN is 34, as glibc and systemd count).
func ParseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	u := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if off, ok := strings.CutPrefix(u, "RTMIN+"); ok {
		if n, err := strconv.Atoi(off); err == nil && n >= 0 && 34+n < 65 {
			return syscall.Signal(34 + n), nil
		}
	}
	if sig, ok := signalNames[u]; ok {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q", s)
}
