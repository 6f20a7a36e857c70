#!/bin/sh
# Runs fuzz targets one after the other for SECONDS each and prints libFuzzer's final
# figures; findings land in artifacts/<target>/, new coverage in $WORK/<target>/.
#
#   fuzz/run.sh [SECONDS] [TARGET...]        (default: 180 s, every target)
#
# BIN=dir uses prebuilt target binaries instead of `cargo +nightly fuzz build`
# (useful while router/src changes under a long campaign). WORK=dir is the working
# corpus (default: a copy of corpus/ in /tmp); merge it back into corpus/ with
# `cargo +nightly fuzz cmin` or `-merge=1` (see README.md).
set -eu
cd "$(dirname "$0")"
SECONDS_EACH=${1:-180}
[ $# -gt 0 ] && shift
TARGETS=${*:-$(ls fuzz_targets | sed 's/\.rs$//')}
WORK=${WORK:-/tmp/router-fuzz-work}
if [ -z "${BIN:-}" ]; then
    cargo +nightly fuzz build -s none
    BIN=target/x86_64-unknown-linux-gnu/release
fi
for t in $TARGETS; do
    case $t in
        proxy_http1|header_rewrite|sticky_cookies) dict=-dict=dict/http.dict ;;
        config) dict=-dict=dict/yaml.dict ;;
        register_message) dict=-dict=dict/json.dict ;;
        *) dict= ;;
    esac
    mkdir -p "$WORK/$t" "artifacts/$t"
    cp -n corpus/$t/* "$WORK/$t/" 2>/dev/null || true
    echo "== $t (${SECONDS_EACH}s)"
    "$BIN/$t" "$WORK/$t" $dict -max_total_time="$SECONDS_EACH" -timeout=30 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>&1 \
        | grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)|panicked|SUMMARY|Test unit written' \
        || true
done
