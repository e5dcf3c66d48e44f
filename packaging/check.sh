#!/usr/bin/env bash
# packaging/check.sh: builds corridor's Debian package and checks it, without touching this host.
#
#   1. builds the .deb with cargo-deb (a release build of -p corridor);
#   2. inspects it: files, modes, owners, conffiles, Depends, maintainer scripts, no demo keys;
#   3. `systemd-analyze verify` and `systemd-analyze security` on the unit as installed;
#   4. installs it with the real dpkg into a throwaway root (`dpkg --root`, maintainer scripts
#      run chrootless with DPKG_ROOT set, which they honour), configures a gateway there as the
#      README says, upgrades twice (once with the shipped gateway.toml unchanged, once with it
#      changed), removes, reinstalls and purges, checking each time that the keys and the
#      operator's configuration are kept (and, on purge, gone).
#
# Needs: cargo, cargo-deb (installed with `cargo install` if missing), dpkg/dpkg-deb, systemd
# (for systemd-analyze; it need not be running). Run as root (dpkg writes root-owned files).
# Exits non-zero with a message on the first failure; cleans up its temporary files either way.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
unit=corridor-gateway.service

step() { printf '\n--> %s\n' "$*"; }
fail() {
    printf '\npackaging/check.sh: FAILED: %s\n' "$*" >&2
    exit 1
}
ok() { printf '    ok: %s\n' "$*"; }
# Any other failing command is a failure too, said as such.
trap 'fail "line $LINENO: \`$BASH_COMMAND\` failed"' ERR

# --- prerequisites ----------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || fail "run as root: the package is installed into a throwaway root with dpkg"
for tool in cargo dpkg dpkg-deb; do
    command -v "$tool" >/dev/null || fail "$tool is missing"
done
command -v systemd-analyze >/dev/null ||
    fail "systemd-analyze is missing: apt-get install systemd (it need not run)"
if ! cargo deb --version >/dev/null 2>&1; then
    step "installing cargo-deb $CARGO_DEB_VERSION"
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked ||
        fail "cannot install cargo-deb (cargo install cargo-deb --locked)"
fi

work=$(mktemp -d /tmp/corridor-packaging.XXXXXX)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

# --- 1. build ---------------------------------------------------------------------------------
step "1. cargo deb -p corridor"
cargo deb -p corridor --locked -o "$work/v1.deb" || fail "cargo deb failed"
deb=$work/v1.deb
version=$(dpkg-deb -f "$deb" Version)
ok "built $(basename "$(dpkg-deb -f "$deb" Package)")_${version}: $(du -h "$deb" | cut -f1)"

# --- 2. inspect -------------------------------------------------------------------------------
step "2. dpkg-deb -I / -c"
[ "$(dpkg-deb -f "$deb" Package)" = corridor ] || fail "Package is not corridor"
depends=$(dpkg-deb -f "$deb" Depends)
[[ ", $depends," == *", iproute2"[,\ ]* ]] || fail "Depends lacks iproute2: $depends"
ok "Depends: $depends"

listing=$(dpkg-deb -c "$deb")
# "MODE OWNER/GROUP SIZE DATE TIME ./PATH" for one path; fails if absent.
entry() {
    local line
    line=$(awk -v p="./$1" '$6 == p' <<<"$listing")
    [ -n "$line" ] || fail "the package lacks /$1"
    awk '{ print $1, $2 }' <<<"$line"
}
expect_entry() { # PATH MODE
    local got
    got=$(entry "$1")
    case "$got" in
    "$2 root/root" | "$2 0/0") ok "/$1 $2 root" ;;
    *) fail "/$1 is '$got', expected '$2 root/root'" ;;
    esac
}
expect_entry usr/bin/corridor -rwxr-xr-x
expect_entry "usr/lib/systemd/system/$unit" -rw-r--r--
expect_entry usr/lib/modules-load.d/corridor.conf -rw-r--r--
expect_entry etc/corridor/gateway.toml -rw-r--r--
expect_entry etc/corridor/policy/README -rw-r--r--
expect_entry usr/share/doc/corridor/README.md -rw-r--r--
if awk '{ print $6 }' <<<"$listing" | grep -q '^\./var/'; then
    fail "the package ships files under /var: /var/lib/corridor is the postinst's, never dpkg's"
fi
if awk '{ print $6 }' <<<"$listing" | grep -q '\.key$'; then
    fail "the package ships a .key file"
fi
ok "nothing under /var, no .key file"

conffiles=$(dpkg-deb -I "$deb" conffiles 2>/dev/null | sort) || fail "the package has no conffiles"
expected=$(printf '%s\n' /etc/corridor/gateway.toml /etc/corridor/policy/README)
[ "$conffiles" = "$expected" ] || fail "conffiles are:
$conffiles
expected:
$expected"
ok "conffiles: $(tr '\n' ' ' <<<"$conffiles")"

ctrl=$work/control
dpkg-deb -e "$deb" "$ctrl"
for script in postinst prerm postrm; do
    [ -x "$ctrl/$script" ] || fail "maintainer script $script missing or not executable"
    cmp -s "$ctrl/$script" "packaging/debian/$script" || fail "$script differs from packaging/debian/$script"
    sh -n "$ctrl/$script" || fail "$script: syntax error"
done
ok "postinst, prerm, postrm: executable, as in packaging/debian/"

extract=$work/extract
dpkg-deb -x "$deb" "$extract"
cmp -s "$extract/usr/lib/systemd/system/$unit" "packaging/systemd/$unit" ||
    fail "the packaged unit differs from packaging/systemd/$unit"
# The published demo private keys (configs/keys) must never be in the package, in any file.
for key in configs/keys/*/*.key; do
    secret=$(tr -d '[:space:]' <"$key")
    [ -n "$secret" ] || continue
    if grep -rlF -- "$secret" "$extract" >/dev/null; then
        fail "the package contains the demo private key of $key in: $(grep -rlF -- "$secret" "$extract" | tr '\n' ' ')"
    fi
done
ok "none of the demo private keys (configs/keys) is in the package"

bin=$extract/usr/bin/corridor
"$bin" --version >/dev/null || fail "the packaged corridor does not run"
# The shipped gateway.toml parses and only lacks `name`; this also proves the binary is not the
# test-only virtual-clock build (that one refuses before reading the configuration).
out=$("$bin" gateway run --config "$extract/etc/corridor/gateway.toml" 2>&1) &&
    fail "gateway run started with the shipped gateway.toml (no name)"
[[ "$out" == *"missing field \`name\`"* ]] ||
    fail "the shipped gateway.toml: expected only 'missing field \`name\`', got: $out"
ok "the packaged binary runs; the shipped gateway.toml needs only a name"

# --- 3. the unit ------------------------------------------------------------------------------
step "3. systemd-analyze verify / security"
# verify resolves ExecStart= and the unit's dependencies inside --root: the unpacked package, plus
# this host's units (network-online.target, ...) and kill (ExecReload=).
vroot=$work/vroot
cp -a "$extract" "$vroot"
mkdir -p "$vroot/usr/lib/systemd/system" "$vroot/usr/bin"
for dir in /usr/lib/systemd/system /lib/systemd/system; do
    [ -d "$dir" ] && cp -an "$dir/." "$vroot/usr/lib/systemd/system/"
done
cp "$(type -P kill)" "$vroot/usr/bin/kill"
ln -sfn usr/bin "$vroot/bin"
ln -sfn usr/lib "$vroot/lib"
# verify reports unknown or malformed settings as warnings and still exits 0: any output fails.
if ! out=$(systemd-analyze verify --man=no --root="$vroot" "/usr/lib/systemd/system/$unit" 2>&1) ||
    [ -n "$out" ]; then
    fail "systemd-analyze verify $unit:
$out"
fi
ok "systemd-analyze verify: clean"
# The exposure score (0 = locked down, 10 = unprotected) may only go down. 3.1 today: root, the
# host network and CAP_NET_ADMIN/CAP_SYS_ADMIN/CAP_SYS_PTRACE are what a gateway needs.
if ! out=$(systemd-analyze security --offline=true --threshold=35 --root="$vroot" \
    "/usr/lib/systemd/system/$unit" 2>&1); then
    fail "systemd-analyze security: exposure above 3.5:
$out"
fi
ok "$(grep -o 'Overall exposure level.*' <<<"$out")"

# --- 4. install, upgrade, remove, purge in a throwaway root -----------------------------------
step "4. dpkg --root: install, configure, upgrade, remove, purge"
root=$work/root
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
# --force-depends: iproute2 and libc6 are not in the empty root's database.
# --force-script-chrootless: run the maintainer scripts here with DPKG_ROOT=$root (the root has
# no /bin/sh to chroot into); they prefix every path with it and leave systemctl alone.
dpkg_root() { dpkg --root="$root" --force-script-chrootless --force-depends "$@" </dev/null; }
state() { dpkg-query --admindir="$root/var/lib/dpkg" -W -f '${db:Status-Status} ${Version}' corridor 2>/dev/null || true; }
fingerprint() { # what must never change: modes, owners, inodes, mtimes and contents
    (
        cd "$root"
        stat -c '%n %a %U:%G %i %Y %Z' var/lib/corridor var/lib/corridor/keys var/lib/corridor/keys/*
        sha256sum var/lib/corridor/keys/* etc/corridor/gateway.toml
    )
}

dpkg_root -i "$deb" >"$work/log" 2>&1 || fail "dpkg -i $version: $(cat "$work/log")"
[ "$(state)" = "installed $version" ] || fail "after dpkg -i: state '$(state)'"
for d in var/lib/corridor var/lib/corridor/keys; do
    [ "$(stat -c '%a %U:%G' "$root/$d")" = "700 root:root" ] ||
        fail "/$d is $(stat -c '%a %U:%G' "$root/$d"), expected 700 root:root"
done
[ -x "$root/usr/bin/corridor" ] && [ -f "$root/usr/lib/systemd/system/$unit" ] ||
    fail "dpkg -i did not install the binary and the unit"
ok "installed $version: binary, unit, /var/lib/corridor/keys 0700 root:root"

# The first configuration, as the README says: a name, a policy, keys generated on the gateway.
sed -i 's/^#name = "edge-1"$/name = "edge-1"/' "$root/etc/corridor/gateway.toml"
grep -q '^name = "edge-1"$' "$root/etc/corridor/gateway.toml" || fail "could not set name in gateway.toml"
cp -r configs/policy/. "$root/etc/corridor/policy/"
"$root/usr/bin/corridor" keys generate --policy "$root/etc/corridor/policy" --gateway edge-1 \
    --out "$root/var/lib/corridor/keys" >"$work/log" 2>&1 ||
    fail "corridor keys generate into /var/lib/corridor/keys: $(cat "$work/log")"
for key in acme globex; do
    [ "$(stat -c '%a' "$root/var/lib/corridor/keys/$key.key")" = 600 ] || fail "$key.key is not 0600"
done
"$root/usr/bin/corridor" policy check "$root/etc/corridor/policy" >/dev/null 2>&1 ||
    fail "corridor policy check /etc/corridor/policy failed"
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -s "/usr/lib/systemd/system/$unit" "$root/etc/systemd/system/multi-user.target.wants/$unit"
before=$(fingerprint)
ok "configured: name, policy, keys generated (acme.key, globex.key 0600), unit enabled"

# Upgrade 1: a new revision, gateway.toml unchanged in the package: dpkg keeps the operator's
# edits without asking (stdin is /dev/null: a prompt would fail).
cargo deb -p corridor --no-build --fast --deb-revision 2 -o "$work/v2.deb" >/dev/null 2>&1 ||
    fail "cargo deb --deb-revision 2 failed"
v2=$(dpkg-deb -f "$work/v2.deb" Version)
dpkg_root -i "$work/v2.deb" >"$work/log" 2>&1 || fail "upgrade to $v2: $(cat "$work/log")"
[ "$(state)" = "installed $v2" ] || fail "after the upgrade to $v2: state '$(state)'"
[ "$(fingerprint)" = "$before" ] || fail "the upgrade to $v2 changed the keys or gateway.toml:
$(diff <(echo "$before") <(fingerprint))"
ok "upgraded to $v2: keys and the edited gateway.toml untouched"

# Upgrade 2: the package's gateway.toml changed too. Unattended: --force-confdef --force-confold
# keeps the operator's file and puts the new one beside it as gateway.toml.dpkg-dist.
pkg=$work/v3
dpkg-deb -R "$work/v2.deb" "$pkg"
sed -i 's/^Version: .*/Version: 0.1.0-3/' "$pkg/DEBIAN/control"
printf '\n# a new commented default in a later version\n' >>"$pkg/etc/corridor/gateway.toml"
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | xargs -0 md5sum >DEBIAN/md5sums)
dpkg-deb -Zgzip --root-owner-group -b "$pkg" "$work/v3.deb" >/dev/null || fail "dpkg-deb -b 0.1.0-3"
dpkg_root --force-confdef --force-confold -i "$work/v3.deb" >"$work/log" 2>&1 ||
    fail "upgrade to 0.1.0-3 with a changed conffile: $(cat "$work/log")"
[ "$(state)" = "installed 0.1.0-3" ] || fail "after the upgrade to 0.1.0-3: state '$(state)'"
[ "$(fingerprint)" = "$before" ] || fail "the upgrade to 0.1.0-3 changed the keys or gateway.toml:
$(diff <(echo "$before") <(fingerprint))"
grep -q 'a new commented default' "$root/etc/corridor/gateway.toml.dpkg-dist" ||
    fail "the package's new gateway.toml is not beside the operator's as gateway.toml.dpkg-dist"
rm "$root/etc/corridor/gateway.toml.dpkg-dist"
ok "upgraded to 0.1.0-3 (--force-confold): operator's gateway.toml kept, new one as .dpkg-dist"

# Remove (not purge): the program goes; configuration, keys and enablement stay.
dpkg_root -r corridor >"$work/log" 2>&1 || fail "dpkg -r: $(cat "$work/log")"
[ "$(state)" = "config-files 0.1.0-3" ] || fail "after dpkg -r: state '$(state)'"
[ ! -e "$root/usr/bin/corridor" ] && [ ! -e "$root/usr/lib/systemd/system/$unit" ] ||
    fail "dpkg -r left the binary or the unit"
[ "$(fingerprint)" = "$before" ] || fail "dpkg -r changed the keys or gateway.toml:
$(diff <(echo "$before") <(fingerprint))"
[ -f "$root/etc/corridor/policy/gateways.toml" ] || fail "dpkg -r removed the operator's policy"
ok "removed: binary and unit gone; keys, gateway.toml, policy kept"

# Reinstall after a remove: everything is still as configured.
dpkg_root -i "$work/v3.deb" >"$work/log" 2>&1 || fail "reinstall after dpkg -r: $(cat "$work/log")"
[ "$(fingerprint)" = "$before" ] || fail "reinstalling changed the keys or gateway.toml"
ok "reinstalled: keys and gateway.toml as before"

# Purge: keys, state, conffiles and the enable symlink go; the operator's policy files stay.
dpkg_root -P corridor >"$work/log" 2>&1 || fail "dpkg -P: $(cat "$work/log")"
[ -z "$(state)" ] || [ "$(state)" = "not-installed " ] || fail "after dpkg -P: state '$(state)'"
[ ! -e "$root/var/lib/corridor" ] || fail "dpkg -P left /var/lib/corridor"
[ ! -e "$root/etc/corridor/gateway.toml" ] || fail "dpkg -P left gateway.toml"
[ ! -e "$root/etc/systemd/system/multi-user.target.wants/$unit" ] && \
    [ ! -L "$root/etc/systemd/system/multi-user.target.wants/$unit" ] ||
    fail "dpkg -P left the enable symlink"
[ -f "$root/etc/corridor/policy/gateways.toml" ] || fail "dpkg -P deleted the operator's own policy files"
ok "purged: keys, /var/lib/corridor, gateway.toml, enable symlink gone; operator's policy files left"

# A purge of a package that was never configured by an operator leaves nothing at all.
dpkg_root -i "$deb" >"$work/log" 2>&1 || fail "fresh install: $(cat "$work/log")"
rm -rf "$root/etc/corridor/policy/gateways.toml" "$root/etc/corridor/policy/tenants"
dpkg_root -P corridor >"$work/log" 2>&1 || fail "dpkg -P: $(cat "$work/log")"
[ ! -e "$root/etc/corridor" ] || fail "dpkg -P of an unconfigured install left /etc/corridor"
[ ! -e "$root/var/lib/corridor" ] || fail "dpkg -P of an unconfigured install left /var/lib/corridor"
ok "install + purge leaves no /etc/corridor, no /var/lib/corridor"

printf '\npackaging/check.sh: OK\n'
