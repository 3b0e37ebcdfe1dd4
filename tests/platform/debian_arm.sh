#!/usr/bin/env bash
# The Raspberry Pi check: build fedtiny's sdist on this machine, install it with pip inside a
# Debian bookworm root of the Pi's architecture run through qemu-user-static, run the kernel
# tests there and require that the kernels dispatched to the NEON path.
#
#   FEDTINY_PI_ARCH=arm64  (default; tests/platform/arm64.sh) what Raspberry Pi OS 64-bit is
#   FEDTINY_PI_ARCH=armhf  (tests/platform/armhf.sh) 32-bit Raspberry Pi OS as a Pi user installs
#                          it: Debian's python3-numpy in the root (PyPI has no armv7 wheels of
#                          numpy or cffi), a venv with --system-site-packages, libffi-dev so pip
#                          builds cffi; NEON is optional on ARMv7 and must be found from HWCAP
#
# Needs root (re-runs itself with sudo), debootstrap, qemu-user-static with the qemu-aarch64
# (arm64) or qemu-arm (armhf) binfmt_misc entry registered, and network access to a Debian
# mirror and to pip's index.
#
# Environment (all optional; ARCH below is ARM64 or ARMHF):
#   FEDTINY_<ARCH>_ROOT   where the root is cached between runs
#                         (default: ${TMPDIR:-/tmp}/fedtiny-<arch>-root); a second run reuses it
#   FEDTINY_<ARCH>_MIRROR Debian mirror for debootstrap (default: the first Debian archive URI
#                         of this machine's apt sources)
#   FEDTINY_<ARCH>_TESTS  test files or globs, relative to the checkout
#                         (default: "tests/test_codec*.py tests/test_fedavg*.py tests/test_norm.py tests/test_train_gemm.py
#                         tests/test_train_grad.py")
#   FEDTINY_<ARCH>_PYTEST_ARGS  extra pytest arguments (default: -q)
#   FEDTINY_<ARCH>_REBUILD=1    throw the cached root away and build it again
#   PYTHON                Python used on this machine to build the sdist (default: python3)
#
# pip inside the root uses the same configuration as pip on this machine: every setting from
# `pip config list` and every PIP_* variable is passed in as a PIP_* variable, and the local
# paths those settings name (file:// indexes, find-links, certificates, constraints) are
# bind-mounted read-only at the same place inside the root for the run.
set -euo pipefail

ARCH="${FEDTINY_PI_ARCH:-arm64}"
if [ "$(id -u)" != 0 ]; then
    keep=FEDTINY_PI_ARCH,PYTHON,TMPDIR
    for a in ARM64 ARMHF; do keep="$keep,FEDTINY_${a}_ROOT,FEDTINY_${a}_MIRROR,FEDTINY_${a}_TESTS,FEDTINY_${a}_PYTEST_ARGS,FEDTINY_${a}_REBUILD"; done
    exec sudo --preserve-env="$keep" bash "$0" "$@"
fi

die() { echo "$ARCH check: $*" >&2; exit 1; }
say() { echo "$ARCH check: $*"; }

ROOT_PACKAGES=ca-certificates,python3,python3-venv,python3-dev,g++
case "$ARCH" in
    arm64) QEMU_NAME=aarch64; VENV_FLAGS=() ;;
    armhf) QEMU_NAME=arm; VENV_FLAGS=(--system-site-packages); ROOT_PACKAGES="$ROOT_PACKAGES,python3-numpy,libffi-dev" ;;
    *) die "FEDTINY_PI_ARCH must be arm64 or armhf, not '$ARCH'" ;;
esac
opt() { local v="FEDTINY_${ARCH^^}_$1"; echo "${!v:-$2}"; }

SRC="$(cd "$(dirname "$0")/../.." && pwd)"
ROOT="$(opt ROOT "${TMPDIR:-/tmp}/fedtiny-$ARCH-root")"
TESTS="$(opt TESTS "tests/test_codec*.py tests/test_fedavg*.py tests/test_norm.py tests/test_train_gemm.py tests/test_train_grad.py")"
PYTEST_ARGS="$(opt PYTEST_ARGS -q)"
REBUILD="$(opt REBUILD "")"
PYTHON="${PYTHON:-python3}"
SUITE=bookworm
READY="$ROOT/.fedtiny-root-ready"   # written only after the root was fully built
T0=$(date +%s)

command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
BINFMT=/proc/sys/fs/binfmt_misc/qemu-$QEMU_NAME
if [ ! -e "$BINFMT" ] && command -v update-binfmts >/dev/null; then
    [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable "qemu-$QEMU_NAME" || true
fi
[ -e "$BINFMT" ] || die "no qemu-$QEMU_NAME entry in /proc/sys/fs/binfmt_misc (apt-get install qemu-user-static binfmt-support)"
grep -qx enabled "$BINFMT" || die "the qemu-$QEMU_NAME binfmt_misc entry is disabled (update-binfmts --enable qemu-$QEMU_NAME)"
# Without the F flag the kernel looks the interpreter up inside the chroot, so it is copied there.
QEMU_INTERP="$(sed -n 's/^interpreter //p' "$BINFMT")"
[ -x "$QEMU_INTERP" ] || die "qemu-$QEMU_NAME interpreter $QEMU_INTERP is missing"

# --- mounts: every one is recorded and undone on exit, whatever happens -----------------------
MOUNTS=()
WORK=""
cleanup() {
    local i
    for (( i=${#MOUNTS[@]}-1; i>=0; i-- )); do
        umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" 2>/dev/null || true
    done
    [ -z "$WORK" ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mounts_under() { findmnt -rn -o TARGET | awk -v r="$1" 'index($0, r "/") == 1 || $0 == r'; }

# bind HOST_PATH read-only at the same path inside the root
bind_ro() {
    local src="$1" dst="$ROOT$1"
    if [ -d "$src" ]; then mkdir -p "$dst"; else mkdir -p "$(dirname "$dst")"; [ -e "$dst" ] || : > "$dst"; fi
    mount --bind "$src" "$dst"
    MOUNTS+=("$dst")
    mount -o remount,bind,ro "$dst" || say "warning: could not make $dst read-only"
}

# --- the Debian mirror, from this machine's apt sources ---------------------------------------
host_mirror() {
    local f
    {
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [ -f "$f" ] || continue
            # one-line format: deb [options] URI SUITE COMPONENTS...
            sed -E 's/#.*//; s/\[[^]]*\]//' "$f" | awk '$1 == "deb" && $3 !~ /-/ { print $2 }'
        done
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] || continue
            # deb822 format: blank-line separated stanzas with Types:, URIs:, Suites:, Enabled:
            awk 'function flush() { if (deb && on && main && uris != "") print uris; deb=0; on=1; main=0; uris="" }
                 BEGIN { on=1 }
                 /^[ \t]*#/ { next }
                 /^[ \t]*$/ { flush(); next }
                 tolower($1) == "types:"   { for (i=2; i<=NF; i++) if ($i == "deb") deb=1 }
                 tolower($1) == "enabled:" { if (tolower($2) == "no") on=0 }
                 tolower($1) == "uris:"    { uris=$2 }
                 tolower($1) == "suites:"  { for (i=2; i<=NF; i++) if ($i !~ /-/) main=1 }
                 END { flush() }' "$f"
        done
    } | { grep -v -i security || true; } | head -n1
}
MIRROR="$(opt MIRROR "$(host_mirror)")"
[ -n "$MIRROR" ] || die "no Debian mirror found in /etc/apt/sources*; set FEDTINY_${ARCH^^}_MIRROR"

# --- the root (cached) --------------------------------------------------------------------------
if [ -n "$REBUILD" ] || [ ! -e "$READY" ]; then
    [ -z "$(mounts_under "$ROOT")" ] || die "something is still mounted under $ROOT; unmount it first"
    case "$ROOT" in /|/usr|/etc|/home|/root|/tmp|"") die "refusing to use $ROOT as the root directory";; esac
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    say "building an $ARCH Debian $SUITE root in $ROOT from $MIRROR (a few minutes)"
    debootstrap --arch="$ARCH" --variant=minbase --foreign --include="$ROOT_PACKAGES" \
        "$SUITE" "$ROOT" "$MIRROR" > "$ROOT.debootstrap.log" 2>&1 \
        || { tail -n 20 "$ROOT.debootstrap.log"; die "debootstrap (first stage) failed; log: $ROOT.debootstrap.log"; }
    mkdir -p "$ROOT$(dirname "$QEMU_INTERP")"
    cp -L "$QEMU_INTERP" "$ROOT$QEMU_INTERP"
    chroot "$ROOT" /debootstrap/debootstrap --second-stage >> "$ROOT.debootstrap.log" 2>&1 \
        || { tail -n 20 "$ROOT.debootstrap.log"; die "debootstrap (second stage, under qemu) failed; log: $ROOT.debootstrap.log"; }
    date -u +%FT%TZ > "$READY"
    say "root ready after $(( $(date +%s) - T0 )) s"
else
    say "reusing the $ARCH root in $ROOT (FEDTINY_${ARCH^^}_REBUILD=1 builds it again)"
    mkdir -p "$ROOT$(dirname "$QEMU_INTERP")"
    cp -L "$QEMU_INTERP" "$ROOT$QEMU_INTERP"   # keep it in step with the host's qemu
fi

# --- pip's configuration, as on this machine ------------------------------------------------
declare -A PIPENV=()
pip_key_to_env() { local k="${1^^}"; echo "PIP_${k//-/_}"; }
if "$PYTHON" -m pip --version >/dev/null 2>&1; then
    while IFS= read -r line; do
        key="${line%%=*}"; val="${line#*=}"
        val="${val#\'}"; val="${val%\'}"
        case "$key" in
            global.*|install.*) PIPENV[$(pip_key_to_env "${key#*.}")]="$val" ;;
        esac
    done < <("$PYTHON" -m pip config list 2>/dev/null || true)
fi
while IFS='=' read -r name val; do
    PIPENV[$name]="$val"
done < <(env | grep '^PIP_[A-Z_]*=' || true)

# --- the sdist, built on this machine --------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fedtiny-$ARCH-work.XXXXXX")"
# Run Python from $WORK: in the checkout, a setuptools build/ folder would shadow the 'build' package.
if ! (cd "$WORK" && "$PYTHON" -c "import build.__main__") 2>/dev/null; then
    "$PYTHON" -m venv "$WORK/hostvenv"
    "$WORK/hostvenv/bin/pip" install -q build > "$WORK/hostvenv.log" 2>&1 \
        || { tail -n 30 "$WORK/hostvenv.log"; die "installing 'build' on this machine failed"; }
    PYTHON="$WORK/hostvenv/bin/python"
fi
(cd "$WORK" && "$PYTHON" -m build --sdist --outdir "$WORK/dist" "$SRC") > "$WORK/build.log" 2>&1 \
    || { tail -n 30 "$WORK/build.log"; die "building the sdist failed"; }
SDIST="$(ls "$WORK"/dist/fedtiny-*.tar.gz)"
say "sdist: $(basename "$SDIST")"

# The tests run from a copy of the sdist's tests/ and pyproject.toml (pytest settings), without the
# fedtiny/ sources beside them, so what is imported is the package pip built and installed.
RUN=/fedtiny-run
rm -rf "$ROOT$RUN"
mkdir -p "$ROOT$RUN/src"
cp "$SDIST" "$ROOT$RUN/"
tar -xzf "$SDIST" -C "$ROOT$RUN/src" --strip-components=1
mkdir -p "$ROOT$RUN/check"
cp -r "$ROOT$RUN/src/tests" "$ROOT$RUN/src/pyproject.toml" "$ROOT$RUN/check/"
TEST_ARGS=()
for pattern in $TESTS; do
    # globs are expanded against the unpacked sdist, so only shipped tests can run
    for f in "$ROOT$RUN/check/"$pattern; do
        [ -e "$f" ] && TEST_ARGS+=("${f#"$ROOT$RUN/check/"}")
    done
done
[ ${#TEST_ARGS[@]} -gt 0 ] || die "none of FEDTINY_${ARCH^^}_TESTS ($TESTS) is in the sdist"

# local paths the settings name: bind them read-only at the same place inside the root
declare -A BOUND=()
for name in "${!PIPENV[@]}"; do
    for tok in ${PIPENV[$name]}; do
        p="${tok#file://}"
        # a file:// index (PEP 503 .../simple) links to its files relative to it: bind its parent
        case "$name:$tok" in PIP_INDEX_URL:file://*|PIP_EXTRA_INDEX_URL:file://*) p="$(dirname "${p%/}")" ;; esac
        case "$p" in /*) ;; *) continue ;; esac
        case "$p" in /|/proc*|/sys*|/dev*|"$ROOT"*) continue ;; esac
        [ -e "$p" ] && [ -z "${BOUND[$p]:-}" ] || continue
        bind_ro "$p"; BOUND[$p]=1
    done
done

# --- run inside the root ----------------------------------------------------------------------
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
mount -t proc proc "$ROOT/proc"; MOUNTS+=("$ROOT/proc")
mount -t tmpfs tmpfs "$ROOT/dev/shm" 2>/dev/null && MOUNTS+=("$ROOT/dev/shm") || true

CHROOT_ENV=(HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1)
for name in "${!PIPENV[@]}"; do CHROOT_ENV+=("$name=${PIPENV[$name]}"); done

say "installing the sdist with pip and running ${TEST_ARGS[*]} under qemu-$QEMU_NAME"
T1=$(date +%s)
env -i "${CHROOT_ENV[@]}" "$(command -v chroot)" "$ROOT" /bin/bash -s -- "$RUN" "$(basename "$SDIST")" "$PYTEST_ARGS" "$ARCH" "${VENV_FLAGS[@]}" -- "${TEST_ARGS[@]}" <<'INSIDE' \
    || die "FAIL: the check failed inside the $ARCH root (see above)"
set -euo pipefail
RUN="$1"; SDIST="$2"; PYTEST_ARGS="$3"; ARCH="$4"; shift 4
VENV_FLAGS=()
while [ "$1" != -- ]; do VENV_FLAGS+=("$1"); shift; done
shift
echo "inside: $(uname -m), $(. /etc/os-release; echo "$PRETTY_NAME"), $(python3 --version)"
t0=$(date +%s)
python3 -m venv "${VENV_FLAGS[@]}" "$RUN/venv"
"$RUN/venv/bin/pip" install -q "$RUN/$SDIST[test]"
t1=$(date +%s)
echo "inside: pip install of the sdist (build deps, C kernels compiled under qemu, numpy, test deps): $((t1 - t0)) s"
cd "$RUN/check"
unset FEDTINY_SIMD
# shellcheck disable=SC2086
"$RUN/venv/bin/pytest" $PYTEST_ARGS -p no:cacheprovider "$@"
echo "inside: pytest: $(( $(date +%s) - t1 )) s"
cd /
"$RUN/venv/bin/python" - <<'PY'
import platform
import numpy
import fedtiny
print(f"machine: {platform.machine()}; fedtiny from {fedtiny.__file__}; numpy {numpy.__version__} from {numpy.__file__}")
print(f"simd_available: {fedtiny.simd_available()}")
print(f"simd_info: {fedtiny.simd_info()}")
PY
SIMD="$("$RUN/venv/bin/python" -c "import fedtiny; print(fedtiny.simd_info())")"
if [ "$SIMD" != neon ]; then
    echo "$ARCH check: the kernels chose the '$SIMD' path on $(uname -m), expected 'neon'" >&2
    exit 1
fi
INSIDE
say "PASS: sdist installed, tests passed and the NEON path ran on $ARCH"
say "times: root $(( T1 - T0 )) s (incl. sdist), pip install + tests $(( $(date +%s) - T1 )) s, total $(( $(date +%s) - T0 )) s"
