// Package host is what nsbox does on the host that belongs to no domain:
// the one runner every external program goes through, file locks, tree
// removal that follows no link and crosses no mount, mount listing, disk
// usage, and small reads and writes confined to a root (os.Root). It
// imports nothing of nsbox; every other package may import it.
package host
