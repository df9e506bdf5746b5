// Package machine is nsbox's lifecycle of machines: create, boot, shell,
// stop, remove, list, status, clone, rename, import, export, bind, limits,
// logs and autostart, in Manager. Open is the one place that chooses how
// machines run: machined (package machined, systemd hosts) or direct
// (package direct, hosts without systemd), both behind backend.Backend.
// Machine trees live in a root-only store under the root directory
// (ROOT/.nsbox/NAME, with ROOT/NAME a link to it), names are unique on the
// host, and the options of a machine are remembered in its .nspawn file.
package machine
