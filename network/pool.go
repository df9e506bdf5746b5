package network

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// DefaultPool is where nsbox takes machine subnets from when nothing else
// configures a machine's veth: a /30 each, host end .1, machine end .2.
const DefaultPool = "10.89.0.0/16"

// ErrPoolExhausted is returned when no free subnet is left.
var ErrPoolExhausted = errors.New("address pool exhausted")

// Link is the point-to-point subnet of one machine's veth pair.
type Link struct {
	Subnet  netip.Prefix // the /30
	Host    netip.Prefix // host end, with the subnet's length
	Machine netip.Prefix // machine end
}

// LinkFor returns the link of a /30 subnet.
func LinkFor(subnet netip.Prefix) (Link, error) {
	subnet = subnet.Masked()
	if !subnet.Addr().Is4() || subnet.Bits() != 30 {
		return Link{}, fmt.Errorf("subnet %s: want an IPv4 /30", subnet)
	}
	host := subnet.Addr().Next()
	return Link{
		Subnet:  subnet,
		Host:    netip.PrefixFrom(host, 30),
		Machine: netip.PrefixFrom(host.Next(), 30),
	}, nil
}

// Allocate picks the lowest /30 of pool that is neither in used nor
// overlapping any of taken (the host's own routes and addresses).
func Allocate(pool netip.Prefix, used []netip.Prefix, taken []netip.Prefix) (Link, error) {
	pool = pool.Masked()
	if !pool.Addr().Is4() || pool.Bits() > 30 {
		return Link{}, fmt.Errorf("pool %s: want an IPv4 prefix of /30 or wider", pool)
	}
	start := binary.BigEndian.Uint32(pool.Addr().AsSlice())
	n := uint32(1) << (30 - pool.Bits())
	for i := uint32(0); i < n; i++ {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], start+i*4)
		cand := netip.PrefixFrom(netip.AddrFrom4(b), 30)
		if overlapsAny(cand, used) || overlapsAny(cand, taken) {
			continue
		}
		return LinkFor(cand)
	}
	return Link{}, fmt.Errorf("%w: %s", ErrPoolExhausted, pool)
}

func overlapsAny(p netip.Prefix, list []netip.Prefix) bool {
	for _, q := range list {
		if p.Overlaps(q) {
			return true
		}
	}
	return false
}

// HostPrefixes lists the IPv4 prefixes of this host's addresses, which a
// machine subnet must not overlap, except for those on links named in
// skip (the machines' own veths).
func HostPrefixes(skip func(link string) bool) []netip.Prefix {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []netip.Prefix
	for _, ifc := range ifs {
		if skip != nil && skip(ifc.Name) {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if p, err := netip.ParsePrefix(ipn.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() {
					out = append(out, p.Masked())
				}
			}
		}
	}
	return out
}
