package oci

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCanonical(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{
		"docker://debian":                            "docker://index.docker.io/library/debian:latest",
		"docker://debian:bookworm":                   "docker://index.docker.io/library/debian:bookworm",
		"docker://docker.io/library/debian:bookworm": "docker://index.docker.io/library/debian:bookworm",
		"docker://index.docker.io/library/debian:12": "docker://index.docker.io/library/debian:12",
		"docker://ghcr.io/o/r:1":                     "docker://ghcr.io/o/r:1",
		"docker://127.0.0.1:5000/app:1":              "docker://127.0.0.1:5000/app:1",
		"docker://debian@sha256:" + sixtyFour:        "docker://index.docker.io/library/debian@sha256:" + sixtyFour,
		"oci:/var/tmp/img":                           "oci:/var/tmp/img",
		"oci:/var/tmp/./img/:v1":                     "oci:/var/tmp/img:v1",
		"oci:img:v1":                                 "oci:" + filepath.Join(wd, "img") + ":v1",
		"docker-archive:../x.tar":                    "docker-archive:" + filepath.Join(filepath.Dir(wd), "x.tar"),
		"docker-archive:/var/tmp/x.tar":              "docker-archive:/var/tmp/x.tar",
	} {
		src, err := ParseSource(in)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if got := src.Canonical(); got != want {
			t.Errorf("%s: %s, want %s", in, got, want)
		}
	}
}

const sixtyFour = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
