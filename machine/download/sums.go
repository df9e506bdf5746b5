package download

import (
	"fmt"
	"strings"
)

// MaxSums bounds what nsbox reads of SHA256SUMS or its signature.
const MaxSums = 1 << 20

// FindSum returns the sha256 (lower-case hex) that SHA256SUMS data gives
// for the file name, as sha256sum writes it and importctl reads it: a
// line "HASH  NAME" (text mode) or "HASH *NAME" (binary mode), NAME the
// file name alone. Other lines are left alone: other files, names with
// directories ("./NAME", "../NAME", "dir/NAME"), which importctl does not
// match either, sha256sum's escaped names (a leading backslash), BSD-style
// lines. A name given twice is refused, even with one hash: a file that
// says two things of one name is not one to trust.
func FindSum(data []byte, name string) (string, error) {
	var found string
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSuffix(line, "\r")
		if len(line) < 66 || line[64] != ' ' || (line[65] != ' ' && line[65] != '*') {
			continue
		}
		if line[66:] != name {
			continue
		}
		sum := strings.ToLower(line[:64])
		if strings.Trim(sum, "0123456789abcdef") != "" {
			return "", fmt.Errorf("SHA256SUMS: the line for %s has no sha256", name)
		}
		if found != "" {
			return "", fmt.Errorf("SHA256SUMS names %s twice: refused it", name)
		}
		found = sum
	}
	if found == "" {
		return "", fmt.Errorf("SHA256SUMS has no line for %s", name)
	}
	return found, nil
}
