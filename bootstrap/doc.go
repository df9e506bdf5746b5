// Package bootstrap turns a release into a root file system: the table of
// known distributions and releases, debootstrap and mmdebstrap with their
// progress, and the cache of pristine bases that makes a warm create a
// copy (or a btrfs snapshot) instead of a bootstrap. It knows nothing of
// machines, D-Bus or the network.
package bootstrap
