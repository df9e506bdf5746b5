package bootstrap

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// This file reads just enough of OpenPGP (RFC 4880 section 4 and 5.5,
// RFC 9580 section 5.5.4) to cut a keyring down to the keys nsbox pins:
// it splits the packets, computes the fingerprints of version 4 keys and
// copies the packets it keeps byte for byte. It checks no signature: gpgv
// does that when debootstrap verifies a Release file against the result.

// OpenPGP packet tags a public keyring holds.
const (
	tagSignature     = 2
	tagPublicKey     = 6
	tagTrust         = 12
	tagUserID        = 13
	tagPublicSubkey  = 14
	tagUserAttribute = 17
)

// errNotKeyring is returned for data that is not an OpenPGP public keyring.
var errNotKeyring = errors.New("not an OpenPGP public keyring")

// pgpPacket is one packet: its tag, its bytes as read (header and body),
// and its body.
type pgpPacket struct {
	tag  int
	raw  []byte
	body []byte
}

// readPackets splits b into packets. Partial and indeterminate lengths,
// which no key packet may have, are refused.
func readPackets(b []byte) ([]pgpPacket, error) {
	var out []pgpPacket
	for len(b) > 0 {
		p, n, err := readPacket(b)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
		b = b[n:]
	}
	return out, nil
}

// readPacket reads the packet at the start of b and returns it with its
// length in b.
func readPacket(b []byte) (pgpPacket, int, error) {
	ctb := b[0]
	if ctb&0x80 == 0 {
		return pgpPacket{}, 0, fmt.Errorf("%w: bad packet header", errNotKeyring)
	}
	var tag, hlen, blen int
	short := fmt.Errorf("%w: truncated packet", errNotKeyring)
	if ctb&0x40 != 0 { // new format
		tag = int(ctb & 0x3f)
		if len(b) < 2 {
			return pgpPacket{}, 0, short
		}
		switch o := int(b[1]); {
		case o < 192:
			hlen, blen = 2, o
		case o < 224:
			if len(b) < 3 {
				return pgpPacket{}, 0, short
			}
			hlen, blen = 3, (o-192)<<8+int(b[2])+192
		case o == 255:
			if len(b) < 6 {
				return pgpPacket{}, 0, short
			}
			hlen, blen = 6, int(b[2])<<24|int(b[3])<<16|int(b[4])<<8|int(b[5])
		default:
			return pgpPacket{}, 0, fmt.Errorf("%w: partial packet length", errNotKeyring)
		}
	} else { // old format
		tag = int(ctb>>2) & 0x0f
		n := map[byte]int{0: 1, 1: 2, 2: 4}[ctb&3]
		if n == 0 {
			return pgpPacket{}, 0, fmt.Errorf("%w: indeterminate packet length", errNotKeyring)
		}
		if len(b) < 1+n {
			return pgpPacket{}, 0, short
		}
		hlen = 1 + n
		for _, c := range b[1 : 1+n] {
			blen = blen<<8 | int(c)
		}
	}
	if blen < 0 || blen > len(b)-hlen {
		return pgpPacket{}, 0, short
	}
	end := hlen + blen
	return pgpPacket{tag: tag, raw: b[:end], body: b[hlen:end]}, end, nil
}

// keyFingerprint is the fingerprint of a version 4 key packet's body, in
// upper-case hex; "" for any other version, which nsbox never pins.
func keyFingerprint(body []byte) string {
	if len(body) == 0 || body[0] != 4 || len(body) > 0xffff {
		return ""
	}
	h := sha1.New()
	h.Write([]byte{0x99, byte(len(body) >> 8), byte(len(body))})
	h.Write(body)
	return strings.ToUpper(hex.EncodeToString(h.Sum(nil)))
}

// normalizeFingerprint drops the spaces of a fingerprint as people write
// it and upper-cases it.
func normalizeFingerprint(fp string) string {
	return strings.ToUpper(strings.ReplaceAll(fp, " ", ""))
}

// filterKeyring keeps, of the keyring in data (binary or ASCII-armored),
// only the keys whose primary fingerprint is pinned: each with its user
// IDs, their signatures, and those of its subkeys that are pinned too.
// User attributes, trust packets and every other key are dropped. It
// returns the kept packets, binary, and the fingerprints of the kept keys.
func filterKeyring(data []byte, pinned []string) ([]byte, []string, error) {
	pin := map[string]bool{}
	for _, fp := range pinned {
		pin[normalizeFingerprint(fp)] = true
	}
	data, err := Dearmor(data)
	if err != nil {
		return nil, nil, err
	}
	packets, err := readPackets(data)
	if err != nil {
		return nil, nil, err
	}
	var out bytes.Buffer
	var kept []string
	keepKey, keepPart := false, false
	for i, p := range packets {
		if i == 0 && p.tag != tagPublicKey {
			return nil, nil, fmt.Errorf("%w: it does not start with a public key", errNotKeyring)
		}
		switch p.tag {
		case tagPublicKey:
			fp := keyFingerprint(p.body)
			keepKey = fp != "" && pin[fp]
			keepPart = keepKey
			if keepKey {
				kept = append(kept, fp)
			}
		case tagUserID:
			keepPart = keepKey
		case tagPublicSubkey:
			keepPart = keepKey && pin[keyFingerprint(p.body)]
		case tagUserAttribute:
			keepPart = false
		case tagSignature:
			// belongs to the key, user ID or subkey before it
		case tagTrust:
			continue
		default:
			return nil, nil, fmt.Errorf("%w: packet of type %d", errNotKeyring, p.tag)
		}
		if keepPart {
			out.Write(p.raw)
		}
	}
	return out.Bytes(), kept, nil
}

// armorHeader starts an ASCII-armored public keyring.
const armorHeader = "-----BEGIN PGP PUBLIC KEY BLOCK-----"

// Dearmor returns the binary packets of an ASCII-armored keyring (RFC
// 4880 section 6), checking its CRC-24 when it has one; binary data is
// returned as it is.
func Dearmor(data []byte) ([]byte, error) {
	text := strings.TrimLeft(string(data), " \t\r\n")
	if !strings.HasPrefix(text, armorHeader) {
		return data, nil
	}
	lines := strings.Split(text, "\n")
	var b64, crc strings.Builder
	inBody, ended := false, false
	for _, l := range lines[1:] {
		l = strings.TrimRight(l, " \t\r")
		switch {
		case strings.HasPrefix(l, "-----END PGP PUBLIC KEY BLOCK-----"):
			ended = true
		case !inBody:
			// armor headers ("Comment: ...") end with an empty line
			inBody = l == ""
		case strings.HasPrefix(l, "=") && len(l) == 5:
			crc.WriteString(l[1:])
		default:
			b64.WriteString(l)
		}
		if ended {
			break
		}
	}
	if !ended {
		return nil, fmt.Errorf("%w: armor without its end line", errNotKeyring)
	}
	out, err := base64.StdEncoding.DecodeString(b64.String())
	if err != nil {
		return nil, fmt.Errorf("%w: bad armor: %v", errNotKeyring, err)
	}
	if crc.Len() > 0 {
		sum, err := base64.StdEncoding.DecodeString(crc.String())
		if err != nil || len(sum) != 3 || crc24(out) != uint32(sum[0])<<16|uint32(sum[1])<<8|uint32(sum[2]) {
			return nil, fmt.Errorf("%w: armor checksum mismatch", errNotKeyring)
		}
	}
	return out, nil
}

// crc24 is the armor checksum of RFC 4880 section 6.1.
func crc24(b []byte) uint32 {
	crc := uint32(0xb704ce)
	for _, c := range b {
		crc ^= uint32(c) << 16
		for i := 0; i < 8; i++ {
			crc <<= 1
			if crc&0x1000000 != 0 {
				crc ^= 0x1864cfb
			}
		}
	}
	return crc & 0xffffff
}
