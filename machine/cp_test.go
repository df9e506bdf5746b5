package machine

import "testing"

func TestLookupEntry(t *testing.T) {
	passwd := []byte("root:x:0:0:root:/root:/bin/bash\n#comment:x:5:5\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\nbig:x:70000:70000::/:/bin/sh\n")
	for _, c := range []struct {
		name      string
		id, group int
		ok        bool
	}{
		{"root", 0, 0, true}, {"www-data", 33, 33, true}, {"33", 33, 33, true},
		{"1000", 1000, -1, true}, {"nobody", 0, 0, false}, {"big", 0, 0, false},
		{"70000", 0, 0, false}, {"-1", 0, 0, false}, {"comment", 0, 0, false},
	} {
		e, ok := lookupEntry(passwd, c.name)
		if ok != c.ok || ok && (e.id != c.id || e.group != c.group) {
			t.Errorf("%s: %+v %v, want %d %d %v", c.name, e, ok, c.id, c.group, c.ok)
		}
	}
}

func TestParseCopyEnd(t *testing.T) {
	for in, want := range map[string]CopyEnd{
		"-": {Stream: true}, "web:/etc": {Machine: "web", Path: "/etc"}, "web:": {Machine: "web", Path: "/"},
		"./a:b": {Path: "./a:b"}, "/x:y": {Path: "/x:y"}, "rel": {Path: "rel"},
	} {
		if got, err := ParseCopyEnd(in); err != nil || got != want {
			t.Errorf("%q: %+v %v, want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "bad name!:/x", "a\x00b"} {
		if _, err := ParseCopyEnd(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
