// The shell helper (NSBOX_ENTER): runs a command in a running machine, as
// nsenter -a -r -w does after setpriv and a cgroup join, in one program
// start. nsenter.c calls it before the Go runtime starts, while the
// process has one thread, as setns into mount, user, pid and time
// namespaces requires. See spec.go for the Go side of the contract.

#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nsenter.h"

#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

// Exit statuses, as env(1) has them: the helper failed, the command was
// found but could not run, the command was not found.
enum { FAILED = 125, CANNOT_RUN = 126, NOT_FOUND = 127 };

#define MAX_CGROUPS 16

// spec is what NSBOX_ENTER says (spec.go).
struct spec {
	int pidfd, root, cwd;
	unsigned ns;                  // CLONE_NEW* flags to enter
	unsigned long long bounding;  // capability bounding set to keep
	int nenv;                     // argv[1..nenv] is the environment
	int cgroups[MAX_CGROUPS], ncgroups;
	const char *name;             // the machine, for messages
};

static const char *machine = "?";

// fail reports one line on stderr and exits with status: nothing runs
// in the machine after it.
static void fail(int status, const char *fmt, ...) {
	va_list ap;
	fprintf(stderr, "nsbox: shell %s: ", machine);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	_exit(status);
}

#define die(what) fail(FAILED, "%s: %s", what, strerror(errno))

// parse reads PIDFD:ROOT:CWD:NSFLAGS:BOUNDING:NENV:CGROUP,...:NAME.
static int parse(const char *s, struct spec *sp) {
	int n = 0;
	if (sscanf(s, "%d:%d:%d:%x:%llx:%d:%n", &sp->pidfd, &sp->root, &sp->cwd, &sp->ns, &sp->bounding, &sp->nenv, &n) != 6 || n == 0)
		return -1;
	s += n;
	sp->ncgroups = 0;
	while (*s != ':') {
		char *end;
		long fd = strtol(s, &end, 10);
		if (end == s || fd < 3 || fd > 1 << 20 || sp->ncgroups == MAX_CGROUPS) return -1;
		sp->cgroups[sp->ncgroups++] = (int)fd;
		s = end;
		if (*s == ',') s++;
		else if (*s != ':') return -1;
	}
	sp->name = s + 1;
	if (sp->pidfd < 3 || sp->root < 3 || sp->cwd < 3 || sp->nenv < 0) return -1;
	return 0;
}

static volatile pid_t child;

// forward passes a signal the helper got on to the command. Not twice:
// a terminal's ^C or ^\ (SI_KERNEL) went to the whole foreground process
// group, the command's too, and a signal a process of the helper's own
// group sent went to that group (nothing in the machine sees the helper's
// PID to send it one alone). A hangup reaches only the session leader,
// the helper: it is passed on.
static void forward(int sig, siginfo_t *si, void *uc) {
	(void)uc;
	int saved = errno;
	if (si->si_code == SI_KERNEL && (sig == SIGINT || sig == SIGQUIT)) goto out;
	if (si->si_code <= 0 && si->si_pid > 0 && getpgid(si->si_pid) == getpgrp()) goto out;
	if (child > 0) kill(child, sig);
out:
	errno = saved;
}

static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};

// run is the child: in the machine's PID namespace, with everything
// else in place, every signal at its default and all blocked. It unblocks
// them and runs cmd with the clean environment env, found on env's PATH.
// It does nothing else: until its exec, a process of the machine sees the
// helper's image (nsbox, the host's libc) under a PID of its own.
static void run(char **env, char **cmd) {
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	environ = env;
	execvp(cmd[0], cmd);
	int e = errno;
	fail(e == ENOENT ? NOT_FOUND : CANNOT_RUN, "run %s: %s", cmd[0], strerror(e));
}

// nsbox_enter runs a command in a running machine. nsbox starts itself
// (/proc/self/exe) with NSBOX_ENTER=PIDFD:ROOT:CWD:NSFLAGS:BOUNDING:NENV:
// CGROUPS:NAME and the arguments ENV... CMD...; the fds are the machine's
// PID 1 as a pidfd, its root and working directory (O_PATH), and the
// cgroup.procs files to join. In this order:
//   1. it joins the cgroups (host paths: before any namespace);
//   2. it enters, through the pidfd and in one step, the namespaces in
//      NSFLAGS (those of PID 1 that differ from nsbox's; the pidfd
//      refers to that process and no later one of its PID), becomes the
//      machine's root when one of them is a user namespace, then takes
//      PID 1's root and working directory, as nsenter -a -r -w;
//   3. it drops every capability not in BOUNDING from its bounding set
//      (after the user namespace: entering one fills the set again) and
//      keeps no permitted, effective, inheritable or ambient capability
//      beyond it, so the child holds, before its exec, no more than the
//      command will;
//   4. it closes every fd but 0, 1 and 2 and forks (a PID namespace takes
//      children only): the child runs CMD with the environment ENV; the
//      helper waits, passes SIGINT, SIGTERM, SIGHUP and SIGQUIT on, and
//      exits with CMD's status, 128+N when signal N ended it.
// Nothing of the machine's tree runs before step 4. A step that fails
// ends the helper with one line on stderr and status 125; a CMD that is
// not found gives 127, one that cannot run 126, as with env(1).
void nsbox_enter(const char *spec, int argc, char **argv) {
	// Out of reach of the machine's root (ptrace, /proc/PID/mem, environ,
	// exe, map_files) once the child has a PID in the machine: a process
	// that is not dumpable needs CAP_SYS_PTRACE in the user namespace it
	// was started in, the host's, which the root of a machine with private
	// users lacks (one without them has it, and is no boundary anyway).
	// runc does the same (CVE-2016-9962).
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) die("make the helper non-dumpable");
	struct spec s;
	if (parse(spec, &s) < 0) fail(FAILED, "bad NSBOX_ENTER %s", spec);
	machine = s.name = strdup(s.name);
	if (!machine) die("allocate");
	// The environment nsbox was started with (the caller's, which may hold
	// secrets) is of no use from here on, and the child would show it to
	// the machine in /proc/PID/environ: wiped.
	for (char **e = environ; *e; e++) explicit_bzero(*e, strlen(*e));
	if (argc < 2 + s.nenv) fail(FAILED, "no command to run");
	char **env = calloc(s.nenv + 1, sizeof *env);
	if (!env) die("allocate");
	for (int i = 0; i < s.nenv; i++) {
		env[i] = argv[1 + i];
		if (!strchr(env[i], '=')) fail(FAILED, "bad environment entry %s", env[i]);
	}
	char **cmd = argv + 1 + s.nenv;

	// 1. The machine's cgroups, so its limits cover the command.
	char pid[24];
	int n = snprintf(pid, sizeof pid, "%d", (int)getpid());
	for (int i = 0; i < s.ncgroups; i++) {
		if (write(s.cgroups[i], pid, n) != n) die("join the machine's cgroups");
		close(s.cgroups[i]);
	}

	// 2. Its namespaces, root and working directory.
	if (s.ns && setns(s.pidfd, (int)s.ns) < 0) {
		if (errno == ESRCH) fail(FAILED, "its PID 1 is gone (the machine stopped or rebooted)");
		die("enter its namespaces");
	}
	close(s.pidfd);
	if (s.ns & CLONE_NEWUSER) {
		// setns kept the host's IDs, which the machine does not map.
		if (setgroups(0, NULL) < 0) die("drop the host's groups");
		if (setresgid(0, 0, 0) < 0) die("become the machine's root group");
		if (setresuid(0, 0, 0) < 0) die("become the machine's root");
	}
	if (fchdir(s.root) < 0 || chroot(".") < 0) die("enter its root directory");
	if (fchdir(s.cwd) < 0) die("enter the working directory of its PID 1");
	close(s.root);
	close(s.cwd);

	// 3. Its capabilities. PR_CAPBSET_DROP says EINVAL past the kernel's
	// last capability; cap_last_cap is not read, as /proc is the
	// machine's now.
	for (int c = 0; c < 64; c++) {
		if (!(s.bounding >> c & 1) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL)
			die("drop capabilities");
	}
	struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct d[2];
	if (syscall(SYS_capget, &h, d) < 0) die("read capabilities");
	for (int i = 0; i < 2; i++) {
		uint32_t keep = (uint32_t)(s.bounding >> (32 * i));
		d[i].permitted &= keep;
		d[i].effective &= keep;
		d[i].inheritable = 0;
	}
	if (syscall(SYS_capset, &h, d) < 0) die("drop capabilities");
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) die("drop ambient capabilities");

	// 4. No fd of the host's goes with the command: the fds above are
	// closed, and so is anything else inherited.
	if (syscall(SYS_close_range, 3, ~0U, 0) < 0) {
		struct rlimit rl;
		int max = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (1 << 20) ? (int)rl.rlim_cur : 1 << 20;
		for (int fd = 3; fd < max; fd++) close(fd);
	}
	// Every signal blocked (one sent meanwhile waits for the handlers to
	// know the child) and at its default, whatever nsbox was started with
	// (a SIG_IGN survives exec): the child has nothing to undo, and waitpid
	// needs SIGCHLD's default.
	sigset_t all, none;
	sigfillset(&all);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &all, NULL);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	for (int sig = 1; sig < NSIG; sig++) sigaction(sig, &sa, NULL); // SIGKILL, SIGSTOP: EINVAL
	pid_t p = fork();
	if (p < 0) die("fork");
	if (p == 0) run(env, cmd);
	child = p;
	sa.sa_sigaction = forward;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigfillset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) sigaction(forwarded[i], &sa, NULL);
	sigprocmask(SIG_SETMASK, &none, NULL);
	int status;
	while (waitpid(p, &status, 0) < 0) {
		if (errno != EINTR) die("wait for the command");
	}
	if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
	if (WIFSIGNALED(status)) _exit(128 + WTERMSIG(status));
	_exit(FAILED);
}
