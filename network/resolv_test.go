package network

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestResolvConfMode(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(text), 0o644)
		return p
	}
	real := write("real", "# x\nnameserver 192.0.2.53\nnameserver 2001:db8::53\nsearch lan\n")
	stub := write("stub", "nameserver 127.0.0.53\noptions edns0\n")
	if got := Nameservers(real); !reflect.DeepEqual(got, []string{"192.0.2.53", "2001:db8::53"}) {
		t.Errorf("Nameservers: %v", got)
	}
	if got := ResolvConfMode(real, true); got != "replace-host" {
		t.Errorf("real servers: %s", got)
	}
	if got := ResolvConfMode(stub, false); got != "replace-host" {
		t.Errorf("host network shares the host's loopback: %s", got)
	}
	_, err := os.Stat(resolvedUplink)
	want := "replace-host"
	if err == nil {
		want = "replace-uplink"
	}
	if got := ResolvConfMode(stub, true); got != want {
		t.Errorf("stub resolver, private network: %s, want %s", got, want)
	}
}
