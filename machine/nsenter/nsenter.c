// nsbox's one constructor: it runs before the Go runtime starts, while
// the process has one thread, as setns into mount, user, pid and time
// namespaces requires. When nsbox starts itself with one of the variables
// below set, it does that mode's work and exits; otherwise it returns at
// once and nsbox starts as usual. See nsenter.go.

#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nsenter.h"

#ifndef __GLIBC__
// read_cmdline is the process's argv from /proc/self/cmdline, for C
// libraries that, unlike glibc, call constructors without arguments.
static char **read_cmdline(int *argc) {
	size_t n = 0, cap = 4096;
	char *buf = malloc(cap);
	int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
	if (!buf || fd < 0) return NULL;
	for (;;) {
		if (n == cap && !(buf = realloc(buf, cap *= 2))) return NULL;
		ssize_t r = read(fd, buf + n, cap - n);
		if (r < 0) return NULL;
		if (r == 0) break;
		n += r;
	}
	close(fd);
	int c = 0;
	for (size_t i = 0; i < n; i++) c += buf[i] == 0;
	char **argv = calloc(c + 1, sizeof *argv);
	if (!argv) return NULL;
	for (size_t i = 0, k = 0; i < n && k < (size_t)c; k++) {
		argv[k] = buf + i;
		i += strlen(buf + i) + 1;
	}
	*argc = c;
	return argv;
}
#endif

static void dispatch(int argc, char **argv) {
	const char *spec = getenv("NSBOX_MOVE_MOUNT");
	if (spec) nsbox_move_mount(spec);
	spec = getenv("NSBOX_ENTER");
	if (spec) nsbox_enter(spec, argc, argv);
}

#ifdef __GLIBC__
// glibc calls constructors with the program's arguments.
__attribute__((constructor)) static void nsbox_nsenter(int argc, char **argv, char **envp) {
	(void)envp;
	dispatch(argc, argv);
}
#else
__attribute__((constructor)) static void nsbox_nsenter(void) {
	if (!getenv("NSBOX_MOVE_MOUNT") && !getenv("NSBOX_ENTER")) return;
	int argc = 0;
	char **argv = read_cmdline(&argc);
	if (!argv) argc = 0;
	dispatch(argc, argv);
}
#endif
