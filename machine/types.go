package machine

import (
	"io"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/direct"
	"github.com/nsbox/nsbox/machine/machined"
)

// The vocabulary the backends share, under the names callers of machine
// know; see package backend.
type (
	// Limits are a machine's resource limits.
	Limits = backend.Limits
	// LogOptions select what Logs shows.
	LogOptions = backend.LogOptions
	// Running is what a backend knows of one running machine.
	Running = backend.Running
	// Usage is what a running machine uses now.
	Usage = backend.Usage
	// PrintableWriter passes text on with what a terminal would act on
	// made visible.
	PrintableWriter = backend.PrintableWriter
)

// Printable makes text from a machine safe to show on a terminal: see
// backend.Printable.
func Printable(s string) string { return backend.Printable(s) }

// PrintableText is Printable for text of several lines.
func PrintableText(s string) string { return backend.PrintableText(s) }

// ValidateText refuses a value a user gave that would reach a file, a unit
// or a command line with a control character in it: see
// backend.ValidateText.
func ValidateText(what, s string) error { return backend.ValidateText(what, s) }

// NewPrintableWriter is a PrintableWriter that writes to w.
func NewPrintableWriter(w io.Writer) *PrintableWriter { return backend.NewPrintableWriter(w) }

// ErrInvalidName is returned for a name machined would refuse.
var ErrInvalidName = backend.ErrInvalidName

// ValidateName refuses a name machined would refuse: see
// backend.ValidateName.
func ValidateName(name string) error { return backend.ValidateName(name) }

// Supervise runs the direct backend's supervisor (nsbox __supervise): see
// direct.Supervise.
func Supervise(statePath, logPath string, argv []string) int {
	return direct.Supervise(statePath, logPath, argv)
}

// AutostartUnitName is the unit enable installs for machine name
// (nsbox@NAME.service).
func AutostartUnitName(name string) string { return machined.AutostartUnitName(name) }

// What package bootstrap says of bases and of a bootstrap in progress,
// under the names callers of machine know; see package bootstrap.
type (
	// BaseCache is the cache of bootstrapped bases machines are copied
	// from (Manager.Bases): List, Find, Refresh and Remove them.
	BaseCache = bootstrap.BaseCache
	// BaseInfo describes one cached base, as cache list shows it.
	BaseInfo = bootstrap.BaseInfo
	// Stage is where a bootstrap is, for CreateOptions.Progress and
	// BaseCache.Refresh.
	Stage = bootstrap.Stage
)
