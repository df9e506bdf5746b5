# nsbox: build, test and try it. Recipes install the host packages they need.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Debian packages nsbox and its tests need on the host.
host_packages := "systemd-container debootstrap gpgv gpg dbus iproute2 util-linux zstd nftables btrfs-progs lintian openssh-client openssh-server"

# where just install puts nsbox, and a staging directory in front of it
# (as make's DESTDIR): just PREFIX=/usr DESTDIR=/tmp/stage install
PREFIX := env("PREFIX", "/usr/local")
DESTDIR := env("DESTDIR", "")

# how every shipped binary is built: position-independent, without the
# build's paths, stripped (-s -w: lintian refuses unstripped binaries),
# with relocations read-only after start (relro, now: Debian's hardening),
# stamped with the commit where there is one (GOFLAGS may say otherwise)
maintainer := "nsbox developers <nsbox@users.noreply.github.com>"
release_flags := "-buildvcs=auto -trimpath -buildmode=pie -tags urfave_cli_no_docs"

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
    go build -buildvcs=auto -tags urfave_cli_no_docs -o nsbox .

# build and install nsbox, its man page, completions and docs under PREFIX
install:
    #!/usr/bin/env bash
    set -euo pipefail
    gen=$(mktemp -d); trap 'rm -rf "$gen"' EXIT
    go build {{release_flags}} -ldflags "-s -w -extldflags=-Wl,-z,relro,-z,now ${NSBOX_VERSION:+-X main.version=$NSBOX_VERSION}" -o "$gen/nsbox" .
    "$gen/nsbox" man | gzip -9n > "$gen/nsbox.1.gz"
    for sh in bash zsh fish; do "$gen/nsbox" completion $sh > "$gen/$sh"; done
    just --quiet PREFIX={{PREFIX}} files | while read -r mode src dst; do
        case $src in gen/*) src=$gen/${src#gen/} ;; esac
        install -D -m "$mode" "$src" "{{DESTDIR}}$dst"
    done
    echo "installed nsbox in {{DESTDIR}}{{PREFIX}}; remove it with: just PREFIX={{PREFIX}} uninstall"

# remove what just install installed under PREFIX (machines and bases stay)
uninstall:
    #!/usr/bin/env bash
    set -euo pipefail
    just --quiet PREFIX={{PREFIX}} files | while read -r mode src dst; do
        rm -f "{{DESTDIR}}$dst"
    done
    # the one directory that is nsbox's alone; the others are shared
    rmdir "{{DESTDIR}}{{PREFIX}}/share/doc/nsbox" 2>/dev/null || true
    echo "removed nsbox from {{DESTDIR}}{{PREFIX}}"

# what install puts where, a line each: mode, source (gen/: made by the
# built binary), destination
[private]
files:
    #!/usr/bin/env bash
    set -euo pipefail
    p={{PREFIX}}
    # zsh on Debian reads vendor-completions for packages, site-functions
    # for what an admin installs
    zsh=share/zsh/site-functions
    [ "$p" = /usr ] && zsh=share/zsh/vendor-completions
    echo "0755 gen/nsbox $p/bin/nsbox"
    echo "0644 gen/nsbox.1.gz $p/share/man/man1/nsbox.1.gz"
    echo "0644 gen/bash $p/share/bash-completion/completions/nsbox"
    echo "0644 gen/zsh $p/$zsh/_nsbox"
    echo "0644 gen/fish $p/share/fish/vendor_completions.d/nsbox.fish"
    echo "0644 README.md $p/share/doc/nsbox/README.md"
    for f in docs/*.md; do echo "0644 $f $p/share/doc/nsbox/$(basename "$f")"; done

# build the Debian package nsbox_VERSION_ARCH.deb into DIR, and lintian it
# (dpkg-deb: every Debian has it, and the package is a dozen plain files)
deb dir=".":
    #!/usr/bin/env bash
    set -euo pipefail
    release=$(sed -n 's/^const release = "\(.*\)"$/\1/p' version.go)
    version=$release
    # between tags: 0.1.0+git20261130.3f4dd10 (sorts after 0.1.0)
    if rev=$(git rev-parse --short=7 HEAD 2>/dev/null) &&
        ! git describe --exact-match --tags --match "v$release" >/dev/null 2>&1; then
        version=$release+git$(git log -1 --format=%cd --date=format:%Y%m%d).$rev
        git diff --quiet HEAD -- || version=$version.modified
    fi
    arch=$(dpkg --print-architecture)
    stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
    chmod 0755 "$stage"
    NSBOX_VERSION=$version just --quiet PREFIX=/usr DESTDIR="$stage" install >/dev/null
    doc=$stage/usr/share/doc/nsbox
    printf 'nsbox (%s) unstable; urgency=medium\n\n  * Built from %s.\n\n -- %s  %s\n' \
        "$version" "${rev:+commit $rev}${rev:-a source tree without git}" "{{maintainer}}" \
        "$(date -R -d "@$(git log -1 --format=%ct 2>/dev/null || date +%s)")" | gzip -9n > "$doc/changelog.gz"
    chmod 0644 "$doc/changelog.gz"
    printf '%s\n' 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/' \
        'Upstream-Name: nsbox' 'Source: https://github.com/nsbox/nsbox' '' \
        'Files: *' 'Copyright: 2026 the nsbox developers' 'License: none-chosen' \
        ' The nsbox developers have not chosen a license yet; until they do, the' \
        ' authors keep their rights. See https://github.com/nsbox/nsbox.' > "$doc/copyright"
    mkdir -m 0755 "$stage/DEBIAN"
    # util-linux (nsenter, mount) is essential: Depends may not name it.
    # the newest glibc symbol version the binary needs (cgo links libc)
    glibc=$(objdump -T "$stage/usr/bin/nsbox" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1 | cut -d_ -f2)
    cat > "$stage/DEBIAN/control" <<EOF
    Package: nsbox
    Version: $version
    Architecture: $arch
    Maintainer: {{maintainer}}
    Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
    Depends: libc6 (>= $glibc), systemd-container, debootstrap, iproute2
    Recommends: mmdebstrap, zstd, nftables, btrfs-progs, dbus
    Section: admin
    Priority: optional
    Homepage: https://github.com/nsbox/nsbox
    Description: systemd-nspawn machines, as machinectl with less typing
     nsbox creates Debian and Ubuntu machines with debootstrap, boots them
     with systemd-nspawn as systemd services registered with machined (or
     under a supervisor of its own where systemd is not running), and gives
     each a shell, a network, limits, logs and autostart. Machines live in
     /srv, cached bases in /var/cache/nsbox.
    EOF
    cat > "$stage/DEBIAN/postrm" <<'EOF'
    #!/bin/sh
    set -e
    # Machines, bases and settings are the user's: purge says where they are.
    if [ "$1" = purge ]; then
        echo "nsbox: left as they were (the user's, not the package's):"
        echo "  machines in /srv (and their settings in /etc/systemd/nspawn),"
        echo "  cached bases in /var/cache/nsbox, machine state in /var/lib/nsbox,"
        echo "  units of enabled machines in /etc/systemd/system/nsbox-*.service."
        echo "nsbox: remove machines with nsbox remove NAME before purging, or those paths by hand."
    fi
    EOF
    chmod 0755 "$stage/DEBIAN/postrm"
    (cd "$stage" && find usr -type f -exec md5sum {} + | sort -k2 > DEBIAN/md5sums)
    chmod 0644 "$stage/DEBIAN/md5sums"
    mkdir -p "{{dir}}"
    out={{dir}}/nsbox_${version}_$arch.deb
    dpkg-deb --root-owner-group -Zxz --build "$stage" "$out" >/dev/null
    if command -v lintian >/dev/null; then
        lintian --fail-on error --suppress-tags-from-file /dev/null "$out"
    fi
    echo "$out"

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

# fuzz name validation and archive member checks, briefly (seeds in machine/testdata/fuzz):
# counts of runs, about 15 s each here, not durations: Go 1.26 can fail a
# fuzz run whose -fuzztime ends while a worker is busy (golang/go#75804)
fuzz:
    go test -run '^$' -fuzz '^FuzzValidateName$' -fuzztime 500000x ./machine/backend/
    go test -run '^$' -fuzz '^FuzzArchiveChecker$' -fuzztime 400000x ./machine/image/
    go test -run '^$' -fuzz '^FuzzParseHost$' -fuzztime 300000x ./remote/

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

# benchmarks: nsbox side by side with cp -a, debootstrap, mmdebstrap, bare nspawn, crane export and tar | ssh | tar (root, minutes)
bench: deps
    #!/usr/bin/env bash
    set -euo pipefail
    command -v mmdebstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap
    # crane, for the image rows: the go-containerregistry of go.mod
    [ -x .cache/bin/crane ] || GOBIN="$PWD/.cache/bin" go install github.com/google/go-containerregistry/cmd/crane@v0.22.1
    export NSBOX_CRANE="$PWD/.cache/bin/crane"
    NSBOX_BENCH=1 go test -tags e2e -count=1 -timeout 60m -run '^TestBenchmark' -v ./e2e/ | grep -v '^=== RUN'
