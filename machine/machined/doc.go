// Package machined runs machines as transient systemd services that
// systemd-nspawn registers with systemd-machined, through package dbusapi;
// commands run in them through systemd-run --machine. It also writes the
// autostart units (nsbox@NAME.service) that enable installs.
package machined
