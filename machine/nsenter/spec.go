package nsenter

import (
	"fmt"
	"path/filepath"
)

// MoveMountEnv is the variable that makes the constructor act.
const MoveMountEnv = "NSBOX_MOVE_MOUNT"

// MoveMount is the environment entry that makes a started nsbox mount the
// detached tree on fd tree at dest in the mount namespace on fd mntns
// (through the user namespace on fd userns first, -1 for none), making
// dest and its missing parents first when mkdir is set.
func MoveMount(mntns, userns, tree int, mkdir bool, dest string) string {
	mk := 0
	if mkdir {
		mk = 1
	}
	return fmt.Sprintf("%s=%d:%d:%d:%d:%s", MoveMountEnv, mntns, userns, tree, mk, filepath.Clean(dest))
}
