//go:build !cgo

package nsenter

// Available reports whether this build has the constructor: false when
// nsbox was built with CGO_ENABLED=0.
const Available = false
