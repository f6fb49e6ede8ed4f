#!/usr/bin/env python3
"""Write a mooncake-style trace (AIPerf `mooncake_trace` JSONL) of N sessions for load and
memory measurements of `parley bench --dataset mooncake_trace`.

Each session has --turns rows sharing one session_id. The first row is a long prompt
(--first-input tokens, ~50k by default) whose leading --shared-blocks hash_ids are one of
--prefix-groups shared prefixes (a long system prompt / repository context common to many
sessions); its remaining blocks are the session's own. Later rows are --next-input-token deltas
with fresh hash_ids. Delays between rows are --delay-ms. Same arguments, same file.

    scripts/gen-mooncake.py --sessions 10000 -o /tmp/mooncake-10k.jsonl
    parley bench --url http://127.0.0.1:8000 --model m --dataset mooncake_trace \
        --dataset-path /tmp/mooncake-10k.jsonl --number 10000 --parallel 64
"""

import argparse
import json
import math
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--turns", type=int, default=2, help="rows per session (default 2)")
    ap.add_argument("--first-input", type=int, default=48_000, help="tokens of each session's first prompt")
    ap.add_argument("--next-input", type=int, default=1_024, help="tokens of each later turn's delta")
    ap.add_argument("--output-length", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=512, help="tokens per hash_id (parley --isl-block-size)")
    ap.add_argument("--prefix-groups", type=int, default=16, help="distinct shared prefixes")
    ap.add_argument("--shared-blocks", type=int, default=90, help="leading blocks of a first prompt taken from its group's prefix")
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("-o", "--output", default="-")
    a = ap.parse_args()

    first_blocks = math.ceil(a.first_input / a.block_size)
    if a.shared_blocks > first_blocks:
        ap.error(f"--shared-blocks {a.shared_blocks} > the first prompt's {first_blocks} blocks")
    next_id = a.prefix_groups * a.shared_blocks  # ids below this are the shared prefixes

    def fresh(n: int) -> list:
        nonlocal next_id
        ids = list(range(next_id, next_id + n))
        next_id += n
        return ids

    out = sys.stdout if a.output == "-" else open(a.output, "w")
    with out:
        for s in range(a.sessions):
            g = s % a.prefix_groups
            shared = list(range(g * a.shared_blocks, (g + 1) * a.shared_blocks))
            row = {
                "session_id": f"s{s}",
                "input_length": a.first_input,
                "output_length": a.output_length,
                "hash_ids": shared + fresh(first_blocks - a.shared_blocks),
            }
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
            for _ in range(1, a.turns):
                row = {
                    "session_id": f"s{s}",
                    "input_length": a.next_input,
                    "output_length": a.output_length,
                    "hash_ids": fresh(math.ceil(a.next_input / a.block_size)),
                    "delay": a.delay_ms,
                }
                out.write(json.dumps(row, separators=(",", ":")) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
