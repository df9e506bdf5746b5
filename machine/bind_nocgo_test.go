//go:build !cgo

package machine

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// A build without cgo has no bind helper: bind says so before it does
// anything, and names what works instead.
func TestBindWithoutCgo(t *testing.T) {
	m := &Manager{Paths: Paths{RootDir: t.TempDir()}}
	err := m.Bind(context.Background(), "web", "/srv/data", "/data", false, false, false)
	if !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), "without cgo") || !strings.Contains(err.Error(), "--bind") {
		t.Errorf("bind in a build without cgo: %v", err)
	}
}
