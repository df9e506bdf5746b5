package bootstrap

import (
	"strings"
)

// Stage is where a bootstrap is: a phase name and how many packages it has
// handled in that phase.
type Stage struct {
	Phase    string // "resolving", "retrieving", "validating", "extracting", "unpacking", "configuring", "done"
	Packages int    // packages handled so far in this phase
	Package  string // the one being handled, when known
	Line     string // debootstrap's own line, for --verbose
}

// progressParser turns debootstrap's "I: ..." lines into stages.
type progressParser struct {
	report func(Stage)
	cur    Stage
}

func newProgressParser(report func(Stage)) *progressParser {
	return &progressParser{report: report}
}

// phases maps the verb of debootstrap's info lines to a phase.
var phases = map[string]string{
	"Retrieving":  "retrieving",
	"Validating":  "validating",
	"Extracting":  "extracting",
	"Unpacking":   "unpacking",
	"Configuring": "configuring",
	"Installing":  "installing",
	"Resolving":   "resolving",
	"Checking":    "checking",
	"Found":       "resolving",
	"Chosen":      "resolving",
	"Base":        "done",
	// mmdebstrap's stages.
	"running":     "resolving",
	"downloading": "retrieving",
	"extracting":  "extracting",
	"installing":  "installing",
	"cleaning":    "configuring",
	"success":     "done",
}

func (p *progressParser) line(l string) {
	if p.report == nil {
		return
	}
	p.cur.Line = l
	f := strings.Fields(strings.TrimPrefix(l, "I: "))
	phase, ok := "", false
	if strings.HasPrefix(l, "I: ") && len(f) > 0 {
		phase, ok = phases[f[0]]
	}
	if !ok {
		p.report(p.cur)
		return
	}
	if phase != p.cur.Phase {
		p.cur = Stage{Phase: phase, Line: l}
	}
	// "I: Retrieving libc6 2.36-9" names one package; "I: Retrieving
	// Release" and "I: Retrieving Packages" do not.
	if len(f) >= 3 && f[1] != "Release" && f[1] != "Packages" && f[1] != "InRelease" {
		p.cur.Packages++
		p.cur.Package = f[1]
	} else {
		p.cur.Package = ""
	}
	p.report(p.cur)
}
