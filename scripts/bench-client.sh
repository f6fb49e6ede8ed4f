#!/usr/bin/env bash
# End-to-end client cost: `parley sim` pinned to one CPU, `parley bench --cores 1` pinned to
# another, one comparable line per case: streams, events/s, client CPU µs per event and per request
# (the bench process's own getrusage, from summary.json), peak RSS, and the client's TTFT/ITL
# p50/p99 next to the sim's recorded truth.
#
#   scripts/bench-client.sh [bulk|paced|busy|paced10k|streams10k|multiturn|openloop|tls-bulk|
#                            tls-paced|scale|all]   (default: all, which is every case but scale)
#
# Cases (issue 4's and issue 12's targets in brackets):
#   bulk        64 streams, TTFT = ITL = 0                     [≤ 0.5 µs CPU/event]
#   paced       512 streams × 10 ms ITL                        [100 % of offered rate, ≤ 5 µs/event,
#                                                               ITL p99 within 1 ms of the sim's]
#   busy        64 streams × 20 ms ITL with the client's core kept busy (a spinning process on
#               it at nice 0, the client at nice 10)            [ITL p99 and TTFT p50 within 0.5 ms
#                                                               of the sim's]
#   paced10k    10,000 streams × 100 ms ITL, 128 tokens each,  [≤ 5 µs/event; offered 100,000
#               2 × 10,000 requests (≈ 26 s)                     events/s: the sim on one core may
#                                                                be the limit, see its ITL]
#   streams10k  10,000 concurrent streams × 200 ms ITL          [≤ 16 KiB user memory per idle
#               (also prints mem/stream = (peak RSS − RSS of a   stream; issue 12: ≤ 8 KiB]
#               1-stream run with the same flags) / streams)
#   multiturn   4 turns × 8k new tokens → 32k-token histories, [per-turn CPU ∝ new bytes only]
#               next to multiturn-base: 1 turn × 8k tokens (the same new bytes per request with
#               no history); equal cpu/req means history costs nothing per turn
#   openloop    1-turn conversations with 2-token replies        [achieved rate ≥ 99.5 % of target,
#               arriving at RATE (default 20,000) per second       schedule lag p99 ≤ 200 µs]
#               for 5 s (Poisson), no cap
#   tls-bulk    bulk over https (the sim with a test certificate, the client with --ca-cert)
#   tls-paced   paced over https: the cost of TLS per event, beside bulk and paced
#               (certificates made by examples/gen-test-cert.rs, built here; no network)
#   scale       N client cores (CLIENT_CPUS, a CPU list; default [the per-core figure holds as N
#               CPU 0) against M sim cores (SIM_CPUS; default CPU    grows: docs/performance.md,
#               1), `parley bench --cpus` / `parley sim --cpus`;     "Scaling past this machine"]
#               the paced load per client core (STREAMS_PER_CORE, default 512, × ITL_MS, default
#               10 ms; 256 tokens, 2 requests per stream), so the offered load grows with N. Prints
#               the total line (events/s, process CPU per event split into the executors' own and
#               the rest: records writer, main thread, start-up) and one line per client core
#               (its events from records.jsonl, events/s, executor CPU, busy %, CPU per event).
#               Give the sim about as many cores as the client: one sim core serves ≈ 50k events/s.
#               On a big host, e.g.: CLIENT_CPUS=0-31 SIM_CPUS=32-63 bash scripts/bench-client.sh scale
#
# Needs: a release build (built here if missing), python3, taskset, /usr/bin/time. Loopback only.
# REPEAT=3 runs each case three times (median of 3 is what docs/performance.md reports).
# CLIENT_FLAGS adds flags to every client run, e.g. CLIENT_FLAGS=--spin. PACED_ITL_MS changes the
# paced case's ITL (default 10). Each line also gives the client's voluntary context switches per
# event (wakeups/event: each is a sleep) and its involuntary ones (preempted).
# RECORDS=off runs the client with --no-records (per-request records are on by default), to
# measure what records.jsonl costs (scale then splits events over cores evenly). BIN=PATH
# benchmarks another build (e.g. an older commit's target/release/parley) with the same sim and
# cases. CLIENT_CPU / SIM_CPU (one CPU each) move every case but scale.
set -euo pipefail
cd "$(dirname "$0")/.."
case_name="${1:-all}"
bin="${BIN:-target/release/parley}"
[ -x "$bin" ] || cargo build --release --locked
records_flag=
case "${RECORDS:-on}" in
  on) ;;
  off) records_flag=--no-records ;;
  *) echo "RECORDS must be on or off, not ${RECORDS}" >&2; exit 2 ;;
esac
repeat="${REPEAT:-1}"
# One socket per stream: the 10k case needs the soft fd limit raised (within the hard limit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
sim_cpu="${SIM_CPU:-1}"
client_cpu="${CLIENT_CPU:-0}"
# Where run_once puts the two processes: every case but scale, one CPU each; scale sets these.
sim_set="$sim_cpu"
sim_place=()
client_set="$client_cpu"
client_place=(--cores 1)
work=$(mktemp -d)
trap 'kill "$sim_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
sim_pid=

run_case() {
  for _ in $(seq "$repeat"); do run_once "$@"; done
}

# TLS=1 (the tls-* cases): the sim serves https with a test certificate, the client trusts its CA.
tls_certs() {
  [ -f "$work/certs/server.pem" ] && return
  cargo run --release --quiet --example gen-test-cert -- "$work/certs" 127.0.0.1 >/dev/null
}

run_once() {
  local name="$1"; shift
  local sim_flags="$1"; shift
  local scheme=http tls_client=()
  if [ "${TLS:-0}" = 1 ]; then
    tls_certs
    sim_flags="$sim_flags --tls-cert $work/certs/server.pem --tls-key $work/certs/server.key"
    scheme=https
    tls_client=(--ca-cert "$work/certs/ca.pem")
  fi
  rm -f "$work/record.jsonl"
  # shellcheck disable=SC2086
  taskset -c "$sim_set" "$bin" sim --port 0 --record "$work/record.jsonl" "${sim_place[@]}" $sim_flags >"$work/sim.out" 2>&1 &
  sim_pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$work/sim.out" 2>/dev/null && break; sleep 0.05; done
  # Port 0: the kernel picks a free port (a fixed guess can collide with TIME_WAIT ports the
  # 10k case leaves behind); the sim prints it.
  local port
  port=$(sed -n 's|.*listening on https\{0,1\}://127.0.0.1:\([0-9]*\).*|\1|p' "$work/sim.out" | head -1)
  [ -n "$port" ] || { echo "sim did not start: $(cat "$work/sim.out")" >&2; exit 1; }
  rm -rf "$work/out"
  # shellcheck disable=SC2086
  /usr/bin/time -f "%M %w %c" -o "$work/rss" ${client_prefix:-} taskset -c "$client_set" "$bin" bench \
    --url "$scheme://127.0.0.1:$port" --model parley-sim "${client_place[@]}" --quiet \
    --outputs-dir "$work/out" --name c "${tls_client[@]}" "$@" ${CLIENT_FLAGS:-} $records_flag >/dev/null
  echo 0 >"$work/base_rss"
  if [ -n "${BASELINE_RSS:-}" ]; then
    # The same flags at one stream: what the process costs before per-stream memory.
    rm -rf "$work/base_out"
    local base=() skip=0 a
    for a in "$@"; do
      if [ "$skip" = 1 ]; then skip=0; continue; fi
      case "$a" in --parallel|--number) skip=1; continue ;; esac
      base+=("$a")
    done
    /usr/bin/time -f "%M" -o "$work/base_rss" taskset -c "$client_cpu" "$bin" bench \
      --url "$scheme://127.0.0.1:$port" --model parley-sim --cores 1 --quiet \
      --outputs-dir "$work/base_out" --name b "${tls_client[@]}" "${base[@]}" --parallel 1 --number 1 >/dev/null
  fi
  # The sim's own CPU (user + system ticks, its whole life): says whether it kept up.
  awk '{print $14 + $15}' "/proc/$sim_pid/stat" >"$work/sim_ticks" 2>/dev/null || echo 0 >"$work/sim_ticks"
  if ! kill -TERM "$sim_pid" 2>/dev/null; then
    echo "note: the sim exited before the run ended: $(tail -3 "$work/sim.out")" >&2
  fi
  wait "$sim_pid" 2>/dev/null || true
  python3 - "$name" "$work" "$(getconf CLK_TCK)" <<'PY'
import json, sys, glob
name, work, clk_tck = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = json.load(open(glob.glob(f"{work}/out/*/c/summary.json")[0]))
recs = [json.loads(l) for l in open(f"{work}/record.jsonl")]
def pct(v, p):
    v = sorted(v)
    return v[max(0, -(-len(v) * p // 100) - 1)] if v else float("nan")
ttft = [(r["first_token_ns"] - r["arrival_ns"]) / 1e6 for r in recs if r.get("first_token_ns")]
itl = [(b - a) / 1e6 for r in recs for a, b in zip(r["chunk_ns"], r["chunk_ns"][1:])]
c = s["client"]
# Peak RSS, then voluntary and involuntary context switches of the whole process: a voluntary
# switch is a sleep, so voluntary switches per event are the wake-ups per event.
rss_kib, vol_cs, invol_cs = (int(x) for x in open(f"{work}/rss").read().split()[-3:])
rss_mib = rss_kib / 1024
base_kib = int(open(f"{work}/base_rss").read().split()[-1])
point = s['config']['point']
streams = point['parallel'] or 0
mem = f" mem/stream={(rss_kib - base_kib) / streams:.1f}KiB (base {base_kib/1024:.0f}MiB)" if base_kib else ""
req = s['requests']['total'] or 1
in_tok = s['input_tokens']['mean'] or 0
lag = c.get('send_lag_us', {})
if point['rate_per_s']:
    sch = s['schedule']
    lag_ms = sch['schedule_lag_ms']
    achieved = sch['achieved_rate_per_s'] or 0
    print(f"{name:10s} offered={point['rate_per_s']:.0f}/s achieved={achieved:.0f}/s "
          f"({100 * achieved / point['rate_per_s']:.2f} %) "
          f"schedule lag p50/p99/max={lag_ms['p50'] * 1e3:.0f}/{lag_ms['p99'] * 1e3:.0f}/{lag_ms['max'] * 1e3:.0f}us "
          f"send lag p50/p99={lag.get('p50') or 0:.0f}/{lag.get('p99') or 0:.0f}us "
          f"cpu/req={c['cpu_us_per_request']:.1f}us busy={c['cores'][0]['busy_pct']:.0f}% "
          f"ok={s['requests']['succeeded']}/{s['requests']['total']} rss={rss_mib:.0f}MiB "
          f"ttft p50/p99={s['ttft_ms']['p50']:.2f}/{s['ttft_ms']['p99']:.2f}ms (sim {pct(ttft,50):.2f}/{pct(ttft,99):.2f})"
          f"{' SATURATED' if c['saturated'] else ''}")
    sys.exit(0)
dur = s['duration_s']
events = c['output_events']
sim_cpu_s = int(open(f"{work}/sim_ticks").read().split()[0]) / clk_tck
if name == "scale":
    # Per-core events from the records (each request: its ITL gaps + its first output event).
    per_core = {}
    for path in glob.glob(f"{work}/out/*/c/records.jsonl"):
        for line in open(path):
            r = json.loads(line)
            if r["phase"] == "measured" and r["first_token_ns"] is not None:
                per_core[r["core"]] = per_core.get(r["core"], 0) + r["itl_count"] + 1
    cores = c['cores']
    n = len(cores)
    core_cpu_s = sum(k['cpu_s'] for k in cores)
    import os
    offered = streams * 1000 / float(os.environ.get("ITL_MS", "10"))
    ev = events or 1
    print(f"scale      client_cores={n} streams={streams} events/s={events / dur:.0f} "
          f"per_core={events / dur / n:.0f} offered/s={offered:.0f} ({100 * events / dur / offered:.1f} %) "
          f"cpu/event={c['cpu_us_per_event']:.2f}us = executors {1e6 * core_cpu_s / ev:.2f} + rest "
          f"{1e6 * (c['cpu_s'] - core_cpu_s) / ev:.2f} (records writer, main thread, start-up) "
          f"ok={s['requests']['succeeded']}/{s['requests']['total']} rss={rss_mib:.0f}MiB "
          f"ttft p50/p99={s['ttft_ms']['p50']:.2f}/{s['ttft_ms']['p99']:.2f}ms (sim {pct(ttft,50):.2f}/{pct(ttft,99):.2f}) "
          f"itl p50/p99={s['itl_ms']['p50']:.2f}/{s['itl_ms']['p99']:.2f}ms (sim {pct(itl,50):.2f}/{pct(itl,99):.2f}) "
          f"lag p50/p99={lag.get('p50') or 0:.0f}/{lag.get('p99') or 0:.0f}us "
          f"sim_cpu={sim_cpu_s:.2f}s dur={dur:.1f}s{' SATURATED' if c['saturated'] else ''}")
    for i, k in enumerate(cores):
        # Without records (RECORDS=off) a core's events are not known: an even share.
        e = per_core.get(i, events / n) if per_core else events / n
        print(f"  core {i:<3d} cpu={k['cpu']:<4d} events={e:.0f} events/s={e / dur:.0f} "
              f"cpu={k['cpu_s']:.2f}s busy={k['busy_pct']:.0f}% cpu/event={1e6 * k['cpu_s'] / max(e, 1):.2f}us")
    sys.exit(0)
extra = ""
if name == "paced10k":
    offered = streams * 1000 / 100
    extra = (f" offered/s={offered:.0f} ({100 * events / dur / offered:.1f} %)"
             f" sim_cpu={sim_cpu_s:.2f}s ({100 * sim_cpu_s / dur:.0f} % of dur)")
print(f"{name:10s} streams={streams:<5d} events/s={c['output_events']/s['duration_s']:>10.0f} "
      f"cpu/event={c['cpu_us_per_event']:.2f}us cpu/req={c['cpu_us_per_request']:.1f}us rss={rss_mib:.0f}MiB "
      f"ttft p50/p99={s['ttft_ms']['p50']:.2f}/{s['ttft_ms']['p99']:.2f}ms (sim {pct(ttft,50):.2f}/{pct(ttft,99):.2f}) "
      f"itl p50/p99={s['itl_ms']['p50']:.2f}/{s['itl_ms']['p99']:.2f}ms (sim {pct(itl,50):.2f}/{pct(itl,99):.2f}) "
      f"ok={s['requests']['succeeded']}/{s['requests']['total']} "
      f"busy={c['cores'][0]['busy_pct']:.0f}% core_cpu={c['cores'][0]['cpu_s']:.2f}s "
      f"wakeups/event={vol_cs / max(c['output_events'], 1):.3f} preempted={invol_cs} lag p50/p99={lag.get('p50') or 0:.0f}/{lag.get('p99') or 0:.0f}us "
      f"in_tokens/req={in_tok:.0f} dur={s['duration_s']:.1f}s{mem}{' SATURATED' if c['saturated'] else ''}{extra}")
PY
}

one_turn=(--min-turns 1 --max-turns 1 --min-prompt-length 32 --max-prompt-length 32
          --max-tokens 256 --extra-args '{"ignore_eos":true}')
if [ "$case_name" = bulk ] || [ "$case_name" = all ]; then
  run_case bulk "--ttft-base-ms 0 --ttft-per-uncached-token-us 0 --itl-ms 0" \
    --parallel 64 --number 2000 "${one_turn[@]}"
fi
if [ "$case_name" = paced ] || [ "$case_name" = all ]; then
  run_case paced "--ttft-base-ms 1 --ttft-per-uncached-token-us 0 --itl-ms ${PACED_ITL_MS:-10}" \
    --parallel 512 --number 1024 "${one_turn[@]}"
fi
if [ "$case_name" = busy ] || [ "$case_name" = all ]; then
  # The client's core kept busy: a spinning process on it at nice 0, the client at nice 10, so
  # the client reads each event when the spinner leaves it a slice. Its reported ITL and TTFT
  # should still match the sim's (event times are the kernel's receive times).
  taskset -c "$client_cpu" sh -c 'while :; do :; done' &
  hog_pid=$!
  client_prefix="nice -n 10" run_case busy "--ttft-base-ms 1 --ttft-per-uncached-token-us 0 --itl-ms 20" \
    --parallel 64 --number 128 "${one_turn[@]}"
  kill "$hog_pid"
fi
if [ "$case_name" = tls-bulk ] || [ "$case_name" = all ]; then
  TLS=1 run_case tls-bulk "--ttft-base-ms 0 --ttft-per-uncached-token-us 0 --itl-ms 0" \
    --parallel 64 --number 2000 "${one_turn[@]}"
fi
if [ "$case_name" = tls-paced ] || [ "$case_name" = all ]; then
  TLS=1 run_case tls-paced "--ttft-base-ms 1 --ttft-per-uncached-token-us 0 --itl-ms 10" \
    --parallel 512 --number 1024 "${one_turn[@]}"
fi
if [ "$case_name" = paced10k ] || [ "$case_name" = all ]; then
  # 10,000 streams × 100 ms: 100,000 events/s offered, each event alone on its socket.
  run_case paced10k "--ttft-base-ms 1 --ttft-per-uncached-token-us 0 --itl-ms 100" \
    --parallel 10000 --number 20000 --min-turns 1 --max-turns 1 --min-prompt-length 32 \
    --max-prompt-length 32 --max-tokens 128 --extra-args '{"ignore_eos":true}' --connect-timeout 60
fi
if [ "$case_name" = streams10k ] || [ "$case_name" = all ]; then
  # 20 tokens × 200 ms: every stream is open ≈ 4 s, idle between events almost all of it.
  BASELINE_RSS=1 run_case streams10k "--ttft-base-ms 1 --ttft-per-uncached-token-us 0 --itl-ms 200" \
    --parallel 10000 --number 10000 --min-turns 1 --max-turns 1 --min-prompt-length 16 \
    --max-prompt-length 16 --max-tokens 20 --extra-args '{"ignore_eos":true}' --connect-timeout 60
fi
if [ "$case_name" = multiturn ] || [ "$case_name" = all ]; then
  # Same new bytes per request (8k-token user turn + a 64-token reply); only the history differs.
  run_case multiturn-base "--ttft-base-ms 1 --ttft-per-uncached-token-us 0 --itl-ms 1" \
    --parallel 16 --number 64 --min-turns 1 --max-turns 1 --min-prompt-length 8000 \
    --max-prompt-length 8000 --max-tokens 64 --extra-args '{"ignore_eos":true}'
  run_case multiturn "--ttft-base-ms 1 --ttft-per-uncached-token-us 0 --itl-ms 1" \
    --parallel 16 --number 16 --min-turns 4 --max-turns 4 --min-prompt-length 8000 \
    --max-prompt-length 8000 --max-tokens 64 --extra-args '{"ignore_eos":true}'
fi
if [ "$case_name" = openloop ] || [ "$case_name" = all ]; then
  rate="${RATE:-20000}"
  run_case openloop "--ttft-base-ms 0 --ttft-per-uncached-token-us 0 --itl-ms 0" \
    --request-rate "$rate" --number "$((rate * 5))" --min-turns 1 --max-turns 1 \
    --min-prompt-length 8 --max-prompt-length 8 --max-tokens 2 --extra-args '{"ignore_eos":true}'
fi
if [ "$case_name" = scale ]; then
  # Not in `all`: on this 2-CPU host it is the paced case again; it is for hosts with many CPUs.
  client_set="${CLIENT_CPUS:-$client_cpu}"
  sim_set="${SIM_CPUS:-$sim_cpu}"
  client_place=(--cpus "$client_set")
  sim_place=(--cpus "$sim_set")
  n=$(python3 -c 'import sys
n = 0
for part in sys.argv[1].split(","):
    a, _, b = part.partition("-")
    n += int(b or a) - int(a) + 1
print(n)' "$client_set")
  per_core="${STREAMS_PER_CORE:-512}"
  export ITL_MS="${ITL_MS:-10}"
  # Every stream is a connection to the one sim port: they need as many ephemeral ports.
  read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
  if [ "$((per_core * n))" -gt "$((hi - lo + 1))" ]; then
    echo "note: $((per_core * n)) connections to one port need more than the $((hi - lo + 1))" \
      "ephemeral ports of net.ipv4.ip_local_port_range ($lo-$hi); widen it (1024 65535)" >&2
  fi
  run_case scale "--ttft-base-ms 1 --ttft-per-uncached-token-us 0 --itl-ms $ITL_MS" \
    --parallel "$((per_core * n))" --number "$((2 * per_core * n))" "${one_turn[@]}" \
    --connect-timeout 60
fi
