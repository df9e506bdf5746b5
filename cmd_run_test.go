package main

import "testing"

// A run's command line is checked before anything is looked up, mounted
// or started: each mistake is a usage error.
func TestRunArgumentsAreChecked(t *testing.T) {
	for _, args := range [][]string{
		{"run", "--release", "bookworm"},                                    // no command
		{"run", "--", "true"},                                               // no release, no machine
		{"run", "--release", "bookworm", "--from", "web", "--", "true"},     // both
		{"run", "--release", "bookworm", "--network", "veth", "--", "true"}, // veth without --boot
		{"run", "--release", "bookworm", "--boot", "--network", "wifi", "--", "true"},
		{"run", "--release", "bookworm", "--bind", "relative:/x", "--", "true"},
		{"run", "--release", "bookworm", "--timeout"},
	} {
		if _, code := capture(t, append([]string{"--root-dir", t.TempDir()}, args...)...); code != exitUsage {
			t.Errorf("%q: exit %d, want %d", args, code, exitUsage)
		}
	}
}
