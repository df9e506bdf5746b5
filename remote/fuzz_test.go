package remote

import (
	"strings"
	"testing"
	"unicode"
)

// FuzzParseHost: whatever -H is given, what ParseHost takes can reach
// ssh's command line as nothing but a host: no part starts with '-', no
// blank, quote or control character is in it, and its String form reads
// back the same.
func FuzzParseHost(f *testing.F) {
	for _, s := range []string{"web", "root@web:2222", "[::1]:22", "-oProxyCommand=x", "a@-b", "fe80::1%eth0", "x:y:z", "a b", "we\nb", "[::1]:", "u@h:65535"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseHost(s)
		if err != nil {
			return
		}
		for _, part := range []string{h.User, h.Name} {
			if strings.HasPrefix(part, "-") {
				t.Fatalf("%q: a part starts with '-': %+v", s, h)
			}
			for _, r := range part {
				if unicode.IsSpace(r) || unicode.IsControl(r) || strings.ContainsRune("'\"\\$`;&|<>()*?[]{}!#~", r) || r > unicode.MaxASCII {
					t.Fatalf("%q: %q in %+v", s, r, h)
				}
			}
		}
		if h.Name == "" || h.Port < 0 || h.Port > 65535 {
			t.Fatalf("%q: %+v", s, h)
		}
		again, err := ParseHost(h.String())
		if err != nil || again != h {
			t.Fatalf("%q: %+v reads back from %q as %+v, %v", s, h, h.String(), again, err)
		}
	})
}
