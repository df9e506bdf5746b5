// Package backend is the contract between package machine and what runs
// machines: the Backend interface and the vocabulary it speaks (StartSpec,
// ExecSpec, Running, Usage, Limits, LogOptions, the errors callers tell
// apart), with the pieces both implementations share: a command run on a
// pseudo terminal of the machine's own, processes known by PID and start
// time, the journal, the boot-start clock, and text made safe to show or
// to put in a file, a unit or a command line. It knows nothing of D-Bus.
package backend
