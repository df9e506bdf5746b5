package main

import "testing"

// An address pool that is no IPv4 prefix with room for a /30 is a usage
// error, found before anything is looked up or booted.
func TestBootAddressPoolIsChecked(t *testing.T) {
	for _, pool := range []string{"bogus", "10.0.0.0/31", "fd00::/64"} {
		if _, code := capture(t, "--address-pool", pool, "--root-dir", t.TempDir(), "boot", "web"); code != exitUsage {
			t.Errorf("--address-pool %s: exit %d, want %d", pool, code, exitUsage)
		}
	}
}
