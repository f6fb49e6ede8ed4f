#!/usr/bin/env bash
# Soak: 10,000 concurrent multi-turn streams against `parley sim` for MINUTES (default 30),
# sampling the client's RSS and open files every 10 s. Fails when the client's RSS grows more
# than 5 % after warm-up, or when the run fails or loses requests.
#
#   scripts/soak.sh [minutes]
#
# Warm-up: the first 5 minutes (a third of the run when shorter). Besides every slot connecting
# and sizing its buffers, each connection's hyper dispatch channel (a tokio mpsc list of 32-slot
# blocks) allocates its second ≈ 8.2 KiB block at its 33rd request and recycles the two from then
# on. At this load a connection carries ≈ 0.2 requests/s, so the 10,000 second blocks (+82 MB)
# arrive between ≈ 2.5 and 3 minutes (heaptrack: 10,000 allocations in
# tokio::sync::mpsc::list::Tx::push, live heap +76 MB between 160 and 180 s, flat within 1 %
# over the next 7 minutes). A baseline taken before them reads that one-off step as growth.
# Baseline = median RSS of the first three samples after warm-up; end = median of the last
# three before --duration ends (the drain after it frees memory).
# Growth = end / baseline − 1. Each sample is one line: seconds, RSS KiB, open fds (client),
# RSS KiB (sim).
#
# Load: --parallel 10000 conversations of 1–4 turns, 20 output tokens × 200 ms ITL (each
# stream open ≈ 4 s and idle between events) and 1 s of think time between turns, so ≈ 10,000
# connections stay open the whole time; --duration MINUTES·60 (soft end). Environment:
# STREAMS (default 10000), BIN (default target/release/parley, built if missing),
# SIM_CPU / CLIENT_CPU (default 1 / 0), KEEP=1 keeps the work directory.
#
# Needs: python3, taskset; the hard fd limit ≥ 2 × STREAMS + margin (client and sim each hold
# one descriptor per connection; parley raises its soft limit to the hard one itself).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-30}"
streams="${STREAMS:-10000}"
bin="${BIN:-target/release/parley}"
[ -x "$bin" ] || cargo build --release --locked
sim_cpu="${SIM_CPU:-1}"
client_cpu="${CLIENT_CPU:-0}"
duration_s=$((minutes * 60))
warmup_s=$((duration_s / 3 < 300 ? duration_s / 3 : 300))
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
need=$((streams + 512))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
  echo "soak: the fd limit $(ulimit -n) is below $need (STREAMS=$streams + margin); raise it (ulimit -n) or lower STREAMS" >&2
  exit 2
fi

work=$(mktemp -d)
sim_pid=
client_pid=
cleanup() {
  [ -n "$client_pid" ] && kill "$client_pid" 2>/dev/null || true
  [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "soak: work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

taskset -c "$sim_cpu" "$bin" sim --port 0 --ttft-base-ms 1 --ttft-per-uncached-token-us 0 \
  --itl-ms 200 >"$work/sim.out" 2>&1 &
sim_pid=$!
for _ in $(seq 200); do grep -q "listening on" "$work/sim.out" 2>/dev/null && break; sleep 0.05; done
port=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$work/sim.out" | head -1)
[ -n "$port" ] || { echo "soak: sim did not start: $(cat "$work/sim.out")" >&2; exit 1; }

taskset -c "$client_cpu" "$bin" bench --url "http://127.0.0.1:$port" --model parley-sim \
  --cores 1 --quiet --outputs-dir "$work/out" --name soak \
  --parallel "$streams" --duration "$duration_s" --dataset synthetic --num-dataset-entries 2000 \
  --conversation-turn-mean 2.5 --conversation-turn-stddev 1 \
  --synthetic-input-tokens-mean 64 --output-tokens-mean 20 \
  --conversation-turn-delay-mean 1000 \
  --extra-args '{"ignore_eos":true}' --connect-timeout 60 >"$work/bench.out" 2>"$work/bench.err" &
client_pid=$!

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
echo "soak: $streams streams for $minutes min (warm-up ${warmup_s} s), client pid $client_pid, sim pid $sim_pid"
echo "t_s rss_kib open_fds sim_rss_kib"
start=$(date +%s)
: >"$work/samples"
while kill -0 "$client_pid" 2>/dev/null; do
  sleep 10
  kill -0 "$client_pid" 2>/dev/null || break
  t=$(($(date +%s) - start))
  fds=$(ls "/proc/$client_pid/fd" 2>/dev/null | wc -l)
  line="$t $(rss_kib "$client_pid") $fds $(rss_kib "$sim_pid")"
  echo "$line" | tee -a "$work/samples"
done
set +e
wait "$client_pid"
rc=$?
set -e
client_pid=
if [ "$rc" != 0 ]; then
  echo "soak: parley bench exited $rc: $(tail -5 "$work/bench.err")" >&2
  exit 1
fi
summary=$(find "$work/out" -name summary.json | head -1)
python3 - "$work/samples" "$warmup_s" "$summary" "$duration_s" <<'EOF'
import json, statistics, sys
samples = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
warmup_s = int(sys.argv[2])
s = json.load(open(sys.argv[3]))
# After --duration the conversations drain and memory is freed: not the steady state.
after = [x for x in samples if warmup_s <= x[0] <= int(sys.argv[4])]
if len(after) < 6:
    sys.exit(f"soak: too few samples after warm-up ({len(after)}); run longer")
base = statistics.median(x[1] for x in after[:3])
end = statistics.median(x[1] for x in after[-3:])
peak = max(x[1] for x in after)
growth = end / base - 1
fds = (after[0][2], after[-1][2], max(x[2] for x in after))
req = s["requests"]
print(f"soak: RSS at warm-up {base / 1024:.1f} MiB, at end {end / 1024:.1f} MiB "
      f"(growth {100 * growth:+.2f} %, peak after warm-up {peak / 1024:.1f} MiB); "
      f"open files at warm-up {fds[0]}, at end {fds[1]}, max {fds[2]}")
print(f"soak: requests {req['succeeded']} ok, {req['failed']} failed {req['failures']}, "
      f"{req['cancelled']} cancelled; conversations {s['conversations']}; "
      f"{s['throughput']['requests_per_s']:.0f} req/s over {s['duration_s']:.0f} s; "
      f"client CPU {s['client']['cpu_s']:.0f} s")
bad = []
if growth > 0.05:
    bad.append(f"RSS grew {100 * growth:.2f} % after warm-up (limit 5 %)")
if req["failed"] > 0:
    bad.append(f"{req['failed']} requests failed")
if bad:
    sys.exit("soak: FAIL: " + "; ".join(bad))
print("soak: PASS")
EOF
