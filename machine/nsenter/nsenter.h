// The modes of nsbox's constructor (nsenter.c). Each runs before the Go
// runtime starts and never returns.
#ifndef NSBOX_NSENTER_H
#define NSBOX_NSENTER_H

// nsbox_move_mount is the bind helper (NSBOX_MOVE_MOUNT, move_mount.c).
void nsbox_move_mount(const char *spec);

// nsbox_enter runs a command in a running machine (NSBOX_ENTER, enter.c);
// argv is the process's own.
void nsbox_enter(const char *spec, int argc, char **argv);

#endif
