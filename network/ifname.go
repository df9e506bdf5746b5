package network

import (
	"encoding/binary"
	"math/bits"
)

// ifNameSize is the kernel's IFNAMSIZ: 15 characters and a NUL.
const ifNameSize = 16

// shortenKey is SHORTEN_IFNAME_HASH_KEY of systemd's
// src/nspawn/nspawn-network.c (systemd 250 to 252).
var shortenKey = [16]byte{0xe1, 0x90, 0xa4, 0x04, 0xa8, 0xef, 0x4b, 0x51, 0x8c, 0xcc, 0xc3, 0x3a, 0x9f, 0x11, 0xfc, 0xa2}

// VethHostNames lists the names systemd-nspawn --network-veth may give the
// host end of machine's veth, the likeliest first: "ve-NAME" when it fits
// in 15 characters; otherwise "ve-NAME" as the alternative name nspawn
// sets on the link, then nspawn's shortened name (shorten_ifname in
// nspawn-network.c: the first 11 characters and four url-safe base64
// characters of a SipHash-2-4 of the full name, under naming schemes from
// v250 on), then the plain cut to 15 characters of older nspawn.
func VethHostNames(machine string) []string {
	full := "ve-" + machine
	if len(full) < ifNameSize {
		return []string{full}
	}
	return []string{full, hashedIfName(full), full[:ifNameSize-1]}
}

// hashedIfName is nspawn's shorten_ifname under NAMING_NSPAWN_LONG_HASH.
func hashedIfName(name string) string {
	const b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	h := sipHash24(shortenKey, []byte(name))
	out := []byte(name[:ifNameSize-5])
	for _, shift := range []uint{18, 12, 6, 0} {
		out = append(out, b64[(h>>shift)&63])
	}
	return string(out)
}

// sipHash24 is SipHash-2-4 (Aumasson and Bernstein), as systemd's
// siphash24() computes it.
func sipHash24(key [16]byte, msg []byte) uint64 {
	k0 := binary.LittleEndian.Uint64(key[:8])
	k1 := binary.LittleEndian.Uint64(key[8:])
	v0 := k0 ^ 0x736f6d6570736575
	v1 := k1 ^ 0x646f72616e646f6d
	v2 := k0 ^ 0x6c7967656e657261
	v3 := k1 ^ 0x7465646279746573
	round := func() {
		v0 += v1
		v1 = bits.RotateLeft64(v1, 13)
		v1 ^= v0
		v0 = bits.RotateLeft64(v0, 32)
		v2 += v3
		v3 = bits.RotateLeft64(v3, 16)
		v3 ^= v2
		v0 += v3
		v3 = bits.RotateLeft64(v3, 21)
		v3 ^= v0
		v2 += v1
		v1 = bits.RotateLeft64(v1, 17)
		v1 ^= v2
		v2 = bits.RotateLeft64(v2, 32)
	}
	n := len(msg)
	for len(msg) >= 8 {
		m := binary.LittleEndian.Uint64(msg)
		v3 ^= m
		round()
		round()
		v0 ^= m
		msg = msg[8:]
	}
	var last [8]byte
	copy(last[:], msg)
	last[7] = byte(n)
	m := binary.LittleEndian.Uint64(last[:])
	v3 ^= m
	round()
	round()
	v0 ^= m
	v2 ^= 0xff
	for i := 0; i < 4; i++ {
		round()
	}
	return v0 ^ v1 ^ v2 ^ v3
}
