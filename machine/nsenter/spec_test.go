package nsenter

import "testing"

func TestEnterString(t *testing.T) {
	for _, c := range []struct {
		e    Enter
		want string
	}{
		{Enter{PIDFD: 3, Root: 4, Cwd: 5, Namespaces: 0x7e020000, Bounding: 0xfdecbfff, Cgroups: []int{6, 7}, Env: 6, Machine: "web"},
			"NSBOX_ENTER=3:4:5:0x7e020000:0xfdecbfff:6:6,7:web"},
		// No cgroup to join, no namespace to enter, nothing kept: the
		// fields stay in their places.
		{Enter{PIDFD: 3, Root: 4, Cwd: 5, Machine: "a.b"}, "NSBOX_ENTER=3:4:5:0x0:0x0:0::a.b"},
	} {
		if got := c.e.String(); got != c.want {
			t.Errorf("%+v: %s, want %s", c.e, got, c.want)
		}
	}
}

func TestMoveMount(t *testing.T) {
	if got := MoveMount(3, -1, 4, true, "/srv/data/"); got != "NSBOX_MOVE_MOUNT=3:-1:4:1:/srv/data" {
		t.Errorf("MoveMount: %s", got)
	}
}
