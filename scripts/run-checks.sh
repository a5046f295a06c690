#!/bin/bash
# Run the project's test suites and end with one line "N passed, N failed".
#
# Usage: run-checks.sh all|model|unit|qtest|colo|nocolo
#   model  spin models of who serves (tests/model/*.pml), and their mutants
#   unit   Check unit tests of our C modules (tests/unit/test-*.c)
#   qtest  a trimmed set of the base's own migration qtests against our build,
#          and the base's VMState unit test (with our flat-struct case)
#   colo   end-to-end tests with the test guest (tests/colo, pytest)
#   nocolo a --disable-colo build refuses x-colo
#   all    all of the above, plus the check that no base COLO module is built
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
build=${COLO_BUILD_DIR:-$top/build}
py=/usr/bin/python3
results=$build/results
mkdir -p "$results"
passed=0
failed=0
failures=()

pass() { passed=$((passed + 1)); echo "PASS: $1"; }
fail() { failed=$((failed + 1)); failures+=("$1"); echo "FAIL: $1"; }

# Each test file names the sources it links in a line
# "unit-test-sources: FILE..." (paths relative to the repo, @BUILD@ for the
# build folder).  A test of a module that uses QEMU's headers and utility
# library says "unit-test-qemu: yes" and is built against the build's
# configuration and libqemuutil.a; one that needs the block layer says
# "unit-test-block: yes" and links it too.
run_unit() {
    local t name srcs out flags
    local qemu_flags="-std=gnu11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64
        -I$build/qemu -I$build/src/include -I$build/src
        -I$build/src/host/include/x86_64 -I$build/src/host/include/generic
        -isystem $build/src/linux-headers $(pkg-config --cflags glib-2.0)"
    local qemu_libs="-Wl,--start-group $build/qemu/libqemuutil.a
        $build/qemu/libqom.a.p/*.o -Wl,--end-group $(pkg-config --libs glib-2.0)
        -lz -lm -pthread"
    local block_objs="$build/qemu/libblock.a.p/*.o $build/qemu/libcrypto.a.p/*.o
        $build/qemu/libio.a.p/*.o $build/qemu/libauthz.a.p/*.o
        $build/qemu/libevent-loop-base.a.p/*.o"
    local block_libs="-Wl,--start-group $block_objs $build/qemu/libqemuutil.a
        $build/qemu/libqom.a.p/*.o -Wl,--end-group
        $(pkg-config --libs glib-2.0) -laio -lz -lm -pthread"
    mkdir -p "$build/unit"
    for t in "$top"/tests/unit/test-*.c; do
        [ -e "$t" ] || continue
        name=$(basename "$t" .c)
        srcs=$(sed -n 's/.*unit-test-sources:\(.*\)/\1/p' "$t" | sed "s|@BUILD@|$build|g")
        flags="-Wextra -I tests"
        if grep -q 'unit-test-qemu: yes' "$t"; then
            flags="$qemu_flags $qemu_libs"
        elif grep -q 'unit-test-block: yes' "$t"; then
            flags="$qemu_flags $block_libs"
        fi
        if ! (cd "$top" && cc -O1 -g -Wall -Werror -o "$build/unit/$name" \
                "$t" $srcs $flags \
                $(pkg-config --cflags --libs check)) > "$results/$name.build.log" 2>&1; then
            cat "$results/$name.build.log"
            fail "unit/$name (build)"
            continue
        fi
        out=$(CK_DEFAULT_TIMEOUT=60 "$build/unit/$name" 2>&1)
        echo "$out" | tail -n 20
        local line checks fails errs
        line=$(echo "$out" | grep -E '^[0-9]+%: Checks: ' | tail -n 1)
        checks=$(echo "$line" | sed -n 's/.*Checks: \([0-9]*\).*/\1/p')
        fails=$(echo "$line" | sed -n 's/.*Failures: \([0-9]*\).*/\1/p')
        errs=$(echo "$line" | sed -n 's/.*Errors: \([0-9]*\).*/\1/p')
        if [ -z "$checks" ]; then
            fail "unit/$name (no Check summary)"
            continue
        fi
        passed=$((passed + checks - fails - errs))
        if [ $((fails + errs)) -gt 0 ]; then
            failed=$((failed + fails + errs))
            failures+=("unit/$name: $fails failures, $errs errors")
        fi
    done
}

# The base's own migration qtests: our patches must not break migration.
BASE_QTESTS="/x86_64/migration/precopy/unix/plain
/x86_64/migration/precopy/tcp/plain
/x86_64/migration/precopy/unix/suspend/live"
# Ours, on the same framework (tests/qtest/migration/colo-tests.c).
COLO_QTESTS="/x86_64/migration/colo/memory-equal/delay-50
/x86_64/migration/colo/reset-keeps-ram
/x86_64/migration/colo/memory-equal/delay-500
/x86_64/migration/colo/incompatible-caps
/x86_64/migration/colo/checkpoint-delay-alias
/x86_64/migration/colo/secondary-only
/x86_64/migration/colo/primary-only
/x86_64/migration/colo/lease-grant"

# Run a command with KVM out of reach, so that the framework falls back to
# TCG.  The paravirtual KVM of these machines loses dirty pages: a plain
# migration of the framework's guest under it leaves page 0xe8000
# different, which the COLO memory comparison would report.  On a host
# with a real KVM, set COLO_QTEST_KVM=1.
without_kvm() {
    if [ -e /dev/kvm ] && [ -z "${COLO_QTEST_KVM:-}" ]; then
        unshare -m sh -c 'mount --bind /dev/null /dev/kvm && exec "$@"' sh "$@"
    else
        "$@"
    fi
}

run_one_qtest() {
    local p=$1 log
    shift
    log="$results/qtest$(echo "$p" | tr / -).log"
    if "$@" env QTEST_QEMU_BINARY="$build/qemu/qemu-system-x86_64" \
           QTEST_QEMU_IMG="$build/qemu/qemu-img" \
           timeout 600 "$build/qemu/tests/qtest/migration-test" --tap -p "$p" \
                > "$log" 2>&1 && grep -q '^ok ' "$log" && ! grep -q '^not ok' "$log"; then
        pass "qtest$p"
    else
        tail -n 30 "$log"
        fail "qtest$p"
    fi
}

# One of the base's test programs that a patch of ours touches: TARGET
# is built and run whole, and its test PATH must be among those that pass.
run_base_test() {
    local target=$1 path=$2 name log
    name=$(basename "$target")
    log="$results/$name.log"
    if make --no-print-directory -C "$build/qemu" "$target" > "$log" 2>&1 &&
       QTEST_QEMU_BINARY="$build/qemu/qemu-system-x86_64" \
       QTEST_QEMU_IMG="$build/qemu/qemu-img" timeout 600 \
           "$build/qemu/$target" --tap >> "$log" 2>&1 &&
       grep -q "^ok .*$path\$" "$log" && ! grep -q '^not ok' "$log"; then
        pass "$target"
    else
        tail -n 30 "$log"
        fail "$target"
    fi
}

run_qtest() {
    local p
    if ! make --no-print-directory -j"$(nproc)" -C "$build/qemu" tests/qtest/migration-test \
            > "$results/qtest-build.log" 2>&1; then
        tail -n 30 "$results/qtest-build.log"
        fail "qtest (build of migration-test)"
        return
    fi
    for p in $BASE_QTESTS; do
        run_one_qtest "$p"
    done
    # The base's VMState tests, with ours of the flat-struct save
    # (patches/vmstate-save-flat-struct-arrays.patch).
    run_base_test tests/unit/test-vmstate /vmstate/array/struct/flat/save
    # The base's IDE tests: a request that failed under werror=stop is
    # still restarted at cont (patches/ide-restart-bh-only-for-errors.patch).
    run_base_test tests/qtest/ide-test /ide/flush/retry_pci
    for p in $COLO_QTESTS; do
        run_one_qtest "$p" without_kvm
    done
}

run_colo() {
    local xml=$results/colo.xml
    rm -f "$xml"
    (cd "$top/tests/colo" && timeout 3000 "$py" -m pytest -v -p no:cacheprovider \
        --junitxml="$xml" .)
    if [ ! -s "$xml" ]; then
        fail "colo (pytest produced no report)"
        return
    fi
    local counts
    counts=$("$py" - "$xml" <<'PYEOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == 'testsuite' else root.findall('testsuite')
t = f = 0
names = []
for s in suites:
    for c in s.findall('testcase'):
        if c.find('skipped') is not None:
            continue
        t += 1
        if c.find('failure') is not None or c.find('error') is not None:
            f += 1
            names.append(c.get('classname', '') + '::' + c.get('name', ''))
print(t - f, f, ' '.join(names))
PYEOF
)
    read -r p f names <<< "$counts"
    passed=$((passed + p))
    failed=$((failed + f))
    [ "$f" -gt 0 ] && failures+=("colo: $names")
    if [ $((p + f)) -eq 0 ]; then
        fail "colo (no test ran)"
    fi
}

# A --disable-colo build (its own build folder; ccache makes it cheap after
# the first time) still migrates and refuses COLO with a clear error.
run_nocolo() {
    local nb="$build/nocolo" out
    if [ ! -f "$nb/config.mak" ] &&
       ! "$top/configure" --disable-colo --build-dir="$nb" \
            > "$results/nocolo-configure.log" 2>&1; then
        tail -n 20 "$results/nocolo-configure.log"
        fail "disable-colo (configure)"
        return
    fi
    if ! sh "$top/scripts/stage.sh" "$(sed -n 's/^BASE := //p' "$nb/config.mak")" \
            "$nb/src" > "$results/nocolo-build.log" 2>&1 ||
       ! make --no-print-directory -j"$(nproc)" -C "$nb/qemu" qemu-system-x86_64 \
            >> "$results/nocolo-build.log" 2>&1; then
        tail -n 20 "$results/nocolo-build.log"
        fail "disable-colo (build)"
        return
    fi
    out=$(printf '%s\n' '{"execute":"qmp_capabilities"}' \
        '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"x-colo","state":true}]}}' \
        '{"execute":"query-colo-status"}' \
        '{"execute":"blockdev-add","arguments":{"driver":"replication","node-name":"r","mode":"primary","file":"f"}}' \
        '{"execute":"quit"}' |
        timeout 60 "$nb/qemu/qemu-system-x86_64" -M none -nodefaults \
            -display none -qmp stdio 2>&1)
    if echo "$out" | grep -q '"desc": "COLO is not available in this QEMU binary"' &&
       echo "$out" | grep -q '"class": "CommandNotFound"' &&
       echo "$out" | grep -q "does not accept value 'replication'"; then
        pass "disable-colo build refuses x-colo and has no replication driver"
    else
        echo "$out"
        fail "disable-colo build refuses x-colo"
    fi
}

# The Promela models (tests/model/*.pml) of who serves, checked by spin:
# each must hold, and each mutant it names ("model-mutants: A B") must
# fail, which shows that the model sees what its rules guard against.
run_one_model() {
    local pml=$1 mutant=$2 dir out flags
    dir=$(mktemp -d)
    # "model-pan-flags: ..." adds to pan's options (a timed model stops
    # its clock, so that waiting ends are no deadlock: -E).
    flags=$(sed -n 's/.*model-pan-flags:\(.*\)/\1/p' "$pml")
    out=$( (cd "$dir" && spin ${mutant:+-D$mutant} -a "$pml" &&
            cc -O2 -DSAFETY -DCOLLAPSE -o pan pan.c &&
            ./pan -m1000000 $flags) 2>&1)
    rm -rf "$dir"
    echo "$out" | sed -n 's/.*errors: \([0-9]*\).*/\1/p' | tail -n 1
}

run_model() {
    local pml name errs m
    for pml in "$top"/tests/model/*.pml; do
        [ -e "$pml" ] || continue
        name=$(basename "$pml" .pml)
        errs=$(run_one_model "$pml" "")
        if [ "$errs" = 0 ]; then
            pass "model/$name"
        else
            fail "model/$name (errors: ${errs:-spin failed})"
        fi
        for m in $(sed -n 's/.*model-mutants:\(.*\)/\1/p' "$pml"); do
            errs=$(run_one_model "$pml" "$m")
            if [ -n "$errs" ] && [ "$errs" != 0 ]; then
                pass "model/$name without $m: violation found"
            else
                fail "model/$name without $m: no violation found"
            fi
        done
    done
}

run_absent() {
    if sh "$top/scripts/check-no-base-colo.sh" "$build"; then
        pass "no base COLO module in the build"
    else
        fail "no base COLO module in the build"
    fi
}

what=${1:-all}
case "$what" in
all) run_model; run_unit; run_absent; run_nocolo; run_qtest; run_colo ;;
model) run_model ;;
unit) run_unit ;;
qtest) run_qtest ;;
colo) run_colo ;;
nocolo) run_nocolo ;;
*) echo "usage: $0 all|model|unit|qtest|colo|nocolo" >&2; exit 2 ;;
esac

echo
for f in "${failures[@]+"${failures[@]}"}"; do
    echo "failed: $f"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
