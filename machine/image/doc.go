// Package image is what nsbox does with a root file system as a file: the
// checks every archive member passes before it reaches a tree
// (ArchiveChecker), extraction through GNU tar of what was checked
// (Extract), and export files that are written through a descriptor of
// their own and published without replacing what a user made meanwhile
// (ExportFile). It knows nothing of machines' lifecycle.
package image
