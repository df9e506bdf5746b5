package backend

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidName is returned for a name machined would not accept.
var ErrInvalidName = errors.New("invalid machine name")

// ValidateName applies machined's rule for machine names (systemd's
// hostname_is_valid): 1-64 characters of ASCII letters, digits, '-' and '.',
// dot-separated labels that are neither empty nor start or end with '-',
// and not the reserved ".host".
func ValidateName(name string) error {
	bad := func(why string) error {
		return fmt.Errorf("%w %q: %s (use 1-64 letters, digits, '-' and '.')", ErrInvalidName, name, why)
	}
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalidName)
	case len(name) > 64:
		return bad("longer than 64 characters")
	case name == ".host":
		return bad("reserved by machined")
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" {
			return bad("empty label (leading, trailing or double dot)")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return bad("a label starts or ends with '-'")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return bad(fmt.Sprintf("character %q not allowed", c))
			}
		}
	}
	return nil
}
