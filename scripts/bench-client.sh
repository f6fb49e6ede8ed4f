#!/usr/bin/env bash
# End-to-end client cost: `parley sim` pinned to one CPU, `parley bench --cores 1` pinned to
# another, one comparable line per case: streams, events/s, client CPU µs per event and per request
# (the bench process's own getrusage, from summary.json), peak RSS, and the client's TTFT/ITL
# p50/p99 next to the sim's recorded truth.
#
#   scripts/bench-client.sh [bulk|paced|multiturn|all]   (default: all)
#
# Needs: a release build (built here if missing), python3, taskset, /usr/bin/time. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
case_name="${1:-all}"
bin=target/release/parley
[ -x "$bin" ] || cargo build --release
sim_cpu="${SIM_CPU:-1}"
client_cpu="${CLIENT_CPU:-0}"
work=$(mktemp -d)
trap 'kill "$sim_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
sim_pid=

run_case() {
  local name="$1"; shift
  local sim_flags="$1"; shift
  local port=$((20000 + RANDOM % 20000))
  rm -f "$work/record.jsonl"
  # shellcheck disable=SC2086
  taskset -c "$sim_cpu" "$bin" sim --port "$port" --record "$work/record.jsonl" $sim_flags >"$work/sim.out" 2>&1 &
  sim_pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$work/sim.out" 2>/dev/null && break; sleep 0.05; done
  rm -rf "$work/out"
  /usr/bin/time -f "%M" -o "$work/rss" taskset -c "$client_cpu" "$bin" bench \
    --url "http://127.0.0.1:$port" --model parley-sim --cores 1 --quiet \
    --outputs-dir "$work/out" --name c "$@" >/dev/null
  kill -TERM "$sim_pid"; wait "$sim_pid" 2>/dev/null || true
  python3 - "$name" "$work" <<'PY'
import json, sys, glob
name, work = sys.argv[1], sys.argv[2]
s = json.load(open(glob.glob(f"{work}/out/*/c/summary.json")[0]))
recs = [json.loads(l) for l in open(f"{work}/record.jsonl")]
def pct(v, p):
    v = sorted(v)
    return v[max(0, -(-len(v) * p // 100) - 1)] if v else float("nan")
ttft = [(r["first_token_ns"] - r["arrival_ns"]) / 1e6 for r in recs if r.get("first_token_ns")]
itl = [(b - a) / 1e6 for r in recs for a, b in zip(r["chunk_ns"], r["chunk_ns"][1:])]
c = s["client"]
rss_mib = int(open(f"{work}/rss").read().split()[-1]) / 1024
print(f"{name:10s} streams={s['config']['parallel']:<5d} events/s={c['output_events']/s['duration_s']:>10.0f} "
      f"cpu/event={c['cpu_us_per_event']:.2f}us cpu/req={c['cpu_us_per_request']:.1f}us rss={rss_mib:.0f}MiB "
      f"ttft p50/p99={s['ttft_ms']['p50']:.2f}/{s['ttft_ms']['p99']:.2f}ms (sim {pct(ttft,50):.2f}/{pct(ttft,99):.2f}) "
      f"itl p50/p99={s['itl_ms']['p50']:.2f}/{s['itl_ms']['p99']:.2f}ms (sim {pct(itl,50):.2f}/{pct(itl,99):.2f}) "
      f"ok={s['requests']['succeeded']}/{s['requests']['total']} "
      f"busy={c['cores'][0]['busy_pct']:.0f}%{' SATURATED' if c['saturated'] else ''}")
PY
}

one_turn=(--min-turns 1 --max-turns 1 --min-prompt-length 32 --max-prompt-length 32
          --max-tokens 256 --extra-args '{"ignore_eos":true}')
if [ "$case_name" = bulk ] || [ "$case_name" = all ]; then
  run_case bulk "--ttft-base-ms 0 --ttft-per-uncached-token-us 0 --itl-ms 0" \
    --parallel 64 --number 2000 "${one_turn[@]}"
fi
if [ "$case_name" = paced ] || [ "$case_name" = all ]; then
  run_case paced "--ttft-base-ms 1 --ttft-per-uncached-token-us 0 --itl-ms 10" \
    --parallel 512 --number 1024 "${one_turn[@]}"
fi
if [ "$case_name" = multiturn ] || [ "$case_name" = all ]; then
  run_case multiturn "--ttft-base-ms 1 --itl-ms 1" \
    --parallel 16 --number 200 --min-turns 2 --max-turns 5 --min-prompt-length 256 \
    --max-prompt-length 512 --max-tokens 128 --extra-args '{"ignore_eos":true}'
fi
