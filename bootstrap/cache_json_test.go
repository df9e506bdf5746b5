package bootstrap

import (
	"encoding/json"
	"strings"
	"testing"
)

// docs/json.md lists mirror among cache list's fields; empty is
// debootstrap's default, and the field is there all the same.
func TestBaseInfoJSONHasMirror(t *testing.T) {
	b, err := json.Marshal(BaseInfo{Key: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"mirror":""`) {
		t.Errorf("no mirror field: %s", b)
	}
}
