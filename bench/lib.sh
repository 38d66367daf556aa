# What bench/run and bench/run-tls share (sourced by both; bench/xmpp, in Python, gets the same from
# Tests/integration/harness/): how busy the machine is before a run, the machine line of a report,
# stopping what a driver started by PID, and waiting for a Swift node to exit after `shutdown`.
# Nothing here touches epmd or stops anything by name.

# ejabberd's allocator flags (issue 13): a copy of Tests/integration/harness/ejabberd.py's
# ALLOC_FLAGS, which says why; bench/run-tls gives them to ejabberd by default.
# shellcheck disable=SC2034  # used by the scripts that source this file
EJABBERD_ALLOC_FLAGS="+MHas ageffcbf +MBas ageffcbf +MHlmbcs 512 +MBlmbcs 512"

# bench_preload NAME: the machine's CPU use (in % of one core) over one second, in $preload; warns
# (prefixed with NAME) above 10%: other load skews every number a bench measures.
bench_preload() {
    local busy0 total0 busy1 total1
    read -r busy0 total0 < <(bench_cpu_sample)
    sleep 1
    read -r busy1 total1 < <(bench_cpu_sample)
    preload=$(( (busy1 - busy0) * 100 * $(nproc) / (total1 - total0 > 0 ? total1 - total0 : 1) ))
    if [ "$preload" -gt 10 ]; then
        echo "$1: WARNING: the machine is already ${preload}% busy (of one core) before the run" >&2
    fi
}

# busy and total jiffies of all CPUs, from /proc/stat.
bench_cpu_sample() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }

# The report's machine line: cores, CPU model, RAM, kernel.
bench_machine() {
    echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, Linux $(uname -r)"
}

# The OTP release of the `erl` on PATH.
bench_otp_release() {
    erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().'
}

# bench_stop_pids NAME TICKS PID...: SIGTERM to each PID still alive, SIGKILL (with a line on stderr
# prefixed with NAME) to those still alive after TICKS tenths of a second, then reaps them.
bench_stop_pids() {
    local name=$1 ticks=$2 pid alive=()
    shift 2
    for pid in "$@"; do
        if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; alive+=("$pid"); fi
    done
    for _ in $(seq "$ticks"); do
        local left=()
        for pid in "${alive[@]}"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
        alive=("${left[@]}")
        [ ${#alive[@]} -eq 0 ] && break
        sleep 0.1
    done
    for pid in "${alive[@]}"; do
        echo "$name: PID $pid did not stop on SIGTERM; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# bench_exit_status PID: a Swift node got `shutdown` and must exit by itself: its exit status once
# it has exited, or "still running" after 10 s, in $exit_status. (Not printed: `wait` only reaps
# children of this shell, not of a $(...) subshell.)
bench_exit_status() {
    exit_status="still running"
    for _ in $(seq 100); do
        if ! kill -0 "$1" 2>/dev/null; then exit_status=0; wait "$1" || exit_status=$?; break; fi
        sleep 0.1
    done
}
