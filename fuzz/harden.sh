#!/usr/bin/env bash
# Runs pgmemo's fuzz targets (fuzz/README.md): `scripts/harden fuzz [--seconds N] [TARGET...]`.
# Installs cargo-fuzz when missing, builds every target (nightly, AddressSanitizer, debug
# assertions and overflow checks), runs each given target (default: all) for N seconds
# (default 30) one after another, prints per target the runs, crashes, timeouts, out-of-memory
# findings, final coverage (libFuzzer's cov: and ft:) and the CPU time the run got (less than
# its wall-clock time on a shared machine), appends that line with the date and commit to
# fuzz/corpus-run/history.tsv, and exits non-zero on any finding.
#
# Corpora: libFuzzer reads the committed seeds (fuzz/seeds/TARGET, never written) and reads
# and writes fuzz/corpus-run/TARGET (gitignored), so a later run starts where this one
# stopped. Findings land in fuzz/artifacts/TARGET/ (gitignored); each one fixed becomes a
# regression test in src/ or tests/.
#
# --no-build runs the targets as last built (a long run is not held up by, nor rebuilt for,
# a change made meanwhile; the history line names the checked-out commit all the same).
#
# Environment: PGMEMO_FUZZ_TARGET_DIR (build directory, default fuzz/target: kept apart from
# the main build because the sanitizer flags would rebuild everything there),
# PGMEMO_FUZZ_JOBS (libFuzzer -jobs/-workers per target, default 1).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fuzz="$repo/fuzz"
seconds=30
build=1
targets=()
while (($#)); do
    case $1 in
        --seconds) seconds=$2; shift 2 ;;
        --seconds=*) seconds=${1#*=}; shift ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) echo "harden fuzz: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done

all_targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$fuzz/Cargo.toml" | grep -v '^pgmemo[-_]fuzz$')
if ((${#targets[@]} == 0)); then
    mapfile -t targets <<<"$all_targets"
fi
for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$all_targets" || { echo "harden fuzz: no target $t (have: $(tr '\n' ' ' <<<"$all_targets"))" >&2; exit 2; }
done

# Input bounds: long enough for a real message or statement, short enough for fast runs.
max_len() {
    case $1 in
        frame_split|config) echo 8192 ;;
        *) echo 4096 ;;
    esac
}
dict() {
    case $1 in
        sql_*) echo "-dict=$fuzz/dicts/sql.dict" ;;
        config) echo "-dict=$fuzz/dicts/toml.dict" ;;
    esac
}

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo +nightly install cargo-fuzz --locked
fi

target_dir=${PGMEMO_FUZZ_TARGET_DIR:-$fuzz/target}
bin_dir="$target_dir/x86_64-unknown-linux-gnu/release"
if ((build)); then
    echo "==> building fuzz targets (target dir $target_dir)"
    build_start=$SECONDS
    (cd "$repo" && cargo +nightly fuzz build --target-dir "$target_dir")
    echo "<== built in $((SECONDS - build_start)) s"
fi
for t in "${targets[@]}"; do
    [ -x "$bin_dir/$t" ] || { echo "harden fuzz: $bin_dir/$t is not built" >&2; exit 2; }
done

logs="$fuzz/corpus-run/logs"
mkdir -p "$logs"
failed=0
summary=()
for t in "${targets[@]}"; do
    corpus="$fuzz/corpus-run/$t"
    artifacts="$fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    seeds=()
    # The three SQL targets share one seed directory of statement texts.
    seed_dir="$fuzz/seeds/$t"
    [[ $t == sql_* ]] && seed_dir="$fuzz/seeds/sql"
    [[ -d "$seed_dir" ]] && seeds=("$seed_dir")
    before=$(find "$artifacts" -type f | sort)
    log="$logs/$t.log"
    echo "==> $t: ${seconds} s"
    start=$SECONDS
    set +e
    # The CPU time of the run (user + system), from bash's `time` on the fuzzer.
    TIMEFORMAT='%U %S'
    # shellcheck disable=SC2046
    cpu=$({ time "$bin_dir/$t" "$corpus" "${seeds[@]}" \
        -max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=10 \
        -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" $(dict "$t") >"$log" 2>&1; } 2>&1)
    rc=$?
    set -e
    cpu=$(awk '{printf "%d", $1 + $2}' <<<"$cpu")
    new=$(comm -13 <(echo "$before") <(find "$artifacts" -type f | sort) | grep -v '^$' || true)
    crashes=$(grep -c '/crash-' <<<"$new" || true)
    timeouts=$(grep -c '/timeout-' <<<"$new" || true)
    ooms=$(grep -c '/oom-\|/leak-' <<<"$new" || true)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo "?")
    ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo "?")
    corp=$(grep -oE 'corp: [0-9]+/[0-9a-zA-Z]+' <<<"$last" | cut -d' ' -f2 || echo "?")
    line=$(printf '%-22s runs %-10s cov %-6s ft %-7s corpus %-10s crashes %s timeouts %s oom/leak %s rss %s MB exit %s (%s s, CPU %s s)' \
        "$t" "${runs:-?}" "$cov" "$ft" "$corp" "$crashes" "$timeouts" "$ooms" "${rss:-?}" "$rc" "$((SECONDS - start))" "${cpu:-?}")
    echo "$line"
    summary+=("$line")
    printf '%s\t%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        "$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')" "$line" >>"$fuzz/corpus-run/history.tsv"
    if ((rc != 0 || crashes + timeouts + ooms > 0)); then
        failed=1
        echo "!!! $t: finding(s) in $artifacts (log: $log):"
        [[ -n "$new" ]] && sed 's/^/    /' <<<"$new"
        grep -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|SUMMARY' "$log" | head -5 | sed 's/^/    /'
    fi
done

echo "==> fuzz summary (${seconds} s per target)"
printf '%s\n' "${summary[@]}"
if ((failed)); then
    echo "!!! fuzzing found problems (see above)" >&2
    exit 1
fi
echo "<== no crash, timeout or out-of-memory in ${#targets[@]} target(s)"
