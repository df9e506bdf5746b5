package network

import (
	"errors"
	"net/netip"
	"testing"
)

func TestAllocate(t *testing.T) {
	pool := netip.MustParsePrefix("10.89.0.0/28") // four /30s
	l, err := Allocate(pool, nil, nil)
	if err != nil || l.Subnet.String() != "10.89.0.0/30" || l.Host.String() != "10.89.0.1/30" || l.Machine.String() != "10.89.0.2/30" {
		t.Fatalf("first: %+v %v", l, err)
	}
	used := []netip.Prefix{netip.MustParsePrefix("10.89.0.0/30")}
	taken := []netip.Prefix{netip.MustParsePrefix("10.89.0.5/32")} // the host uses 10.89.0.5
	l, err = Allocate(pool, used, taken)
	if err != nil || l.Subnet.String() != "10.89.0.8/30" {
		t.Fatalf("skipping used and taken: %+v %v", l, err)
	}
	used = append(used, netip.MustParsePrefix("10.89.0.8/30"), netip.MustParsePrefix("10.89.0.12/30"))
	if _, err := Allocate(pool, used, taken); !errors.Is(err, ErrPoolExhausted) {
		t.Errorf("full pool: %v", err)
	}
	if _, err := Allocate(netip.MustParsePrefix("fd00::/64"), nil, nil); err == nil {
		t.Error("IPv6 pool accepted")
	}
	if _, err := LinkFor(netip.MustParsePrefix("10.0.0.0/24")); err == nil {
		t.Error("a /24 link accepted")
	}
}
