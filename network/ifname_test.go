package network

import (
	"slices"
	"testing"
)

func TestSipHash24(t *testing.T) {
	// The reference vectors of the SipHash paper: key 00..0f, messages
	// 00, 00 01, ... (the empty one and the 15-byte one here).
	var key [16]byte
	for i := range key {
		key[i] = byte(i)
	}
	msg := make([]byte, 15)
	for i := range msg {
		msg[i] = byte(i)
	}
	for _, c := range []struct {
		n    int
		want uint64
	}{{0, 0x726fdb47dd0e0e31}, {8, 0x93f5f5799a932462}, {15, 0xa129ca6149be45e5}} {
		if got := sipHash24(key, msg[:c.n]); got != c.want {
			t.Errorf("siphash of %d bytes: %#x, want %#x", c.n, got, c.want)
		}
	}
}

func TestVethHostNames(t *testing.T) {
	for _, c := range []struct {
		machine string
		want    []string
	}{
		{"web", []string{"ve-web"}},
		{"twelve-chars", []string{"ve-twelve-chars"}},
		// Read from systemd-nspawn 252.39 (Debian 12), naming scheme v252:
		// "Network interface name 've-averyverylongmachine' has been
		// changed to 've-averyverhjFR'", with the full name as altname.
		{"averyverylongmachine", []string{"ve-averyverylongmachine", "ve-averyverhjFR", "ve-averyverylon"}},
	} {
		if got := VethHostNames(c.machine); !slices.Equal(got, c.want) {
			t.Errorf("VethHostNames(%q) = %q, want %q", c.machine, got, c.want)
		}
	}
}
