package remote

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// WatchHangup sends this process SIGHUP when its standard output or
// error is gone, and returns: without a terminal, sshd does not signal a
// command whose client went away; the pipe or socket it writes to
// reports the hang-up (POLLERR, POLLHUP). The remote side of -H runs it.
func WatchHangup() {
	fds := []unix.PollFd{{Fd: 1}, {Fd: 2}}
	for {
		_, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		for _, f := range fds {
			if f.Revents&(unix.POLLERR|unix.POLLHUP) != 0 {
				_ = syscall.Kill(os.Getpid(), syscall.SIGHUP)
				return
			}
			if f.Revents&unix.POLLNVAL != 0 {
				return
			}
		}
	}
}
