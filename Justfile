# nsbox: build, test and try it. Recipes install the host packages they need.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Debian packages nsbox and its tests need on the host.
host_packages := "systemd-container debootstrap dbus iproute2 util-linux zstd nftables btrfs-progs"

# list the recipes
default:
    @just --list

# install the Debian packages nsbox needs (once per machine)
deps:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    for p in {{host_packages}}; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    fi

# build the nsbox binary into ./nsbox
build:
    go build -tags urfave_cli_no_docs -o nsbox .

# gofmt, go vet and staticcheck
lint:
    test -z "$(gofmt -l .)" || { gofmt -l .; exit 1; }
    go vet ./...
    go vet -tags e2e ./e2e/
    go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
    go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 -tags e2e ./e2e/

# unit tests (no root, no network), and the build without cgo
unit:
    go test ./...
    CGO_ENABLED=0 go build -o /dev/null .
    CGO_ENABLED=0 go test -count=1 -run '^TestBindWithoutCgo$' ./machine/

# end-to-end tests against real nspawn, debootstrap, machined (root)
e2e: deps
    go test -tags e2e -count=1 -timeout 60m -v ./e2e/

# fuzz name validation and archive member checks, briefly (seeds in machine/testdata/fuzz)
fuzz:
    go test -run '^$' -fuzz '^FuzzValidateName$' -fuzztime 15s ./machine/backend/
    go test -run '^$' -fuzz '^FuzzArchiveChecker$' -fuzztime 15s ./machine/image/

# every test: lint, unit, fuzz, then end to end
test: lint unit fuzz e2e

# the main job: create, boot, list, shell into, stop a bookworm machine
demo: deps build
    #!/usr/bin/env bash
    set -euo pipefail
    step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
    ./nsbox doctor || true
    if ! ./nsbox status demo >/dev/null 2>&1; then
        step ./nsbox create demo --release bookworm
    fi
    ./nsbox stop demo >/dev/null 2>&1 || true
    step ./nsbox boot demo
    step ./nsbox list
    step ./nsbox shell demo -- sh -c '. /etc/os-release; echo "hello from $PRETTY_NAME, systemd says: $(systemctl is-system-running)"'
    step ./nsbox status demo
    step ./nsbox stop demo
    step ./nsbox list
    printf '\nThe machine is kept in /srv/demo; remove it with: ./nsbox remove demo\n'

# benchmarks: nsbox side by side with cp -a, debootstrap, mmdebstrap and bare nspawn (root, minutes)
bench: deps
    #!/usr/bin/env bash
    set -euo pipefail
    command -v mmdebstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap
    NSBOX_BENCH=1 go test -tags e2e -count=1 -timeout 60m -run '^TestBenchmark' -v ./e2e/ | grep -v '^=== RUN'
