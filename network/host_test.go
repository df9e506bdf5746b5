package network

import (
	"os"
	"path/filepath"
	"testing"
)

func TestNetworkdRunsHere(t *testing.T) {
	proc := t.TempDir()
	mk := func(pid, comm, net, pidns string) {
		os.MkdirAll(filepath.Join(proc, pid, "ns"), 0o755)
		os.WriteFile(filepath.Join(proc, pid, "comm"), []byte(comm+"\n"), 0o644)
		os.Symlink(net, filepath.Join(proc, pid, "ns", "net"))
		os.Symlink(pidns, filepath.Join(proc, pid, "ns", "pid"))
	}
	mk("self", "nsbox", "net:[1]", "pid:[1]")
	mk("20", "systemd-network", "net:[2]", "pid:[2]") // a machine's own networkd
	mk("25", "systemd-network", "net:[1]", "pid:[3]") // a --network host machine's
	mk("30", "sshd", "net:[1]", "pid:[1]")
	if networkdRunsHere(proc) {
		t.Error("a machine's networkd taken for the host's")
	}
	mk("40", "systemd-network", "net:[1]", "pid:[1]")
	if !networkdRunsHere(proc) {
		t.Error("the host's networkd not found")
	}
}

func TestContainerVeNetwork(t *testing.T) {
	etc, lib := t.TempDir(), t.TempDir()
	dirs := []string{etc, lib}
	if containerVeNetwork(dirs) {
		t.Error("found without a file")
	}
	os.WriteFile(filepath.Join(lib, "80-container-ve.network"), []byte("[Match]\nName=ve-*\n"), 0o644)
	if !containerVeNetwork(dirs) {
		t.Error("stock file not found")
	}
	os.Symlink("/dev/null", filepath.Join(etc, "80-container-ve.network"))
	if containerVeNetwork(dirs) {
		t.Error("masked by a link to /dev/null, still found")
	}
	os.Remove(filepath.Join(etc, "80-container-ve.network"))
	os.WriteFile(filepath.Join(etc, "80-container-ve.network"), nil, 0o644)
	if containerVeNetwork(dirs) {
		t.Error("masked by an empty file, still found")
	}
}
