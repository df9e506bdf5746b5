package machine

import (
	"errors"

	"github.com/nsbox/nsbox/machine/backend"
)

// Errors a caller can tell apart with errors.Is.
var (
	ErrNotFound      = errors.New("no such machine")
	ErrExists        = errors.New("machine already exists")
	ErrRunning       = errors.New("machine is running")
	ErrNotRunning    = backend.ErrNotRunning
	ErrBusy          = backend.ErrBusy
	ErrNotRoot       = errors.New("must be run as root")
	ErrNoBackend     = errors.New("backend not available")
	ErrBootFailed    = errors.New("boot failed")
	ErrInvalidOption = backend.ErrInvalidOption
	ErrOtherRoot     = errors.New("name taken")
)
