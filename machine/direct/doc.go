// Package direct runs machines without machined, for hosts whose PID 1 is
// not systemd: systemd-nspawn --register=no under a small supervisor
// (nsbox __supervise) that gives the machine cgroups of its own, restarts
// nspawn on a reboot, records the machine in a state file under /run and
// keeps its console log. Commands enter the machine through nsbox's enter
// helper (package nsenter), on a pseudo terminal of the machine's own
// devpts.
package direct
