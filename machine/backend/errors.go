package backend

import "errors"

// Errors a backend returns that callers tell apart with errors.Is; package
// machine exports them under the same names.
var (
	ErrNotRunning    = errors.New("machine is not running")
	ErrInvalidOption = errors.New("invalid option")
	// ErrBusy is a machine another process holds, or one between two
	// states (between boots): trying again later may succeed.
	ErrBusy = errors.New("machine is busy")
)
