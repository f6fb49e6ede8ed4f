#!/usr/bin/env bash
# Moves every IRQ off the CPUs parley pins its executors to, so interrupt handling does not steal
# time from them mid-event. Dry run by default; --apply (as root) writes the masks. Stop
# irqbalance first, or it moves them back: sudo systemctl stop irqbalance.
#
#   tuning/irq-affinity.sh --away-from 2-3            # show what would change
#   sudo tuning/irq-affinity.sh --away-from 2-3 --apply
set -euo pipefail
away=""; apply=0
while [ $# -gt 0 ]; do
  case "$1" in
    --away-from) away="$2"; shift 2 ;;
    --apply) apply=1; shift ;;
    *) echo "usage: $0 --away-from CPU_LIST [--apply]" >&2; exit 2 ;;
  esac
done
[ -n "$away" ] || { echo "usage: $0 --away-from CPU_LIST [--apply]" >&2; exit 2; }
ncpu=$(nproc --all)
# The allowed set: every CPU not in the list.
allowed=$(python3 - "$away" "$ncpu" <<'PY'
import sys
away = set()
for part in sys.argv[1].split(","):
    a, _, b = part.partition("-")
    away.update(range(int(a), int(b or a) + 1))
keep = [c for c in range(int(sys.argv[2])) if c not in away]
print(",".join(map(str, keep)))
PY
)
[ -n "$allowed" ] || { echo "no CPU left for IRQs: keep at least one CPU out of --away-from" >&2; exit 1; }
for dir in /proc/irq/[0-9]*; do
  irq=${dir##*/}
  now=$(cat "$dir/smp_affinity_list" 2>/dev/null || echo '?')
  [ "$now" = "$allowed" ] && continue
  echo "echo $allowed > $dir/smp_affinity_list   # irq $irq now on $now"
  if [ "$apply" = 1 ]; then
    echo "$allowed" > "$dir/smp_affinity_list" 2>/dev/null || echo "  (irq $irq cannot be moved: per-CPU or managed)"
  fi
done
[ "$apply" = 1 ] || echo "# dry run: nothing changed. Re-run as root with --apply."
