// Package imagetest builds the archives and files the tests of package
// image and package machine attack import and export with. Tests only.
package imagetest
