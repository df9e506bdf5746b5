package backend

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"jammy", true},
		{"web-1", true},
		{"a.b.c", true},
		{"A9", true},
		{strings.Repeat("a", 64), true},
		{"", false},
		{strings.Repeat("a", 65), false},
		{"../etc", false},
		{"a/b", false},
		{"-rf", false},
		{".hidden", false},
		{"x y", false},
		{"x-", false},
		{"a..b", false},
		{"a.", false},
		{"a.-b", false},
		{"fööbar", false},
		{"a\nb", false},
		{"under_score", false},
		{".host", false},
		{"a\x00b", false},
	} {
		err := ValidateName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q): %v is not ErrInvalidName", tc.name, err)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("ValidateName(%q): error spans lines: %q", tc.name, err)
		}
	}
}

func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"jammy", "../etc", "a..b", ".host", "x-", "fööbar"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidateName(s) != nil {
			return
		}
		// Whatever passes is safe as a single path component and a
		// machined name.
		if len(s) == 0 || len(s) > 64 || strings.ContainsAny(s, "/\x00 \n_") || s[0] == '.' || s[0] == '-' || strings.Contains(s, "..") {
			t.Fatalf("ValidateName accepted %q", s)
		}
	})
}
