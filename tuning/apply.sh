#!/usr/bin/env bash
# Applies tuning/sysctl.conf and a high open-file limit to this host. Dry run by default: prints
# each command with the reason; pass --apply (as root) to run them.
#
#   tuning/apply.sh            # show what would change
#   sudo tuning/apply.sh --apply
#
# Then check with `parley doctor`. Nothing here survives a reboot except the files it installs
# (/etc/sysctl.d/90-parley.conf, /etc/security/limits.d/90-parley.conf).
set -euo pipefail
cd "$(dirname "$0")"
apply=0
[ "${1:-}" = --apply ] && apply=1
run() {
  local why="$1"; shift
  echo "# $why"
  echo "$*"
  if [ "$apply" = 1 ]; then bash -c "$*"; fi
}
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  key="${line%%=*}"; key="${key// /}"
  value="${line#*=}"; value="${value# }"
  now=$(sysctl -n "$key" 2>/dev/null | tr -s '\t ' ' ' || echo '?')
  [ "$now" = "$value" ] && { echo "# ok: $key = $now"; continue; }
  run "$key: now '$now'" "sysctl -w $key=\"$value\""
done < sysctl.conf
run "persist the sysctls across reboots" "install -m 644 sysctl.conf /etc/sysctl.d/90-parley.conf"
run "one socket per --parallel slot: raise the open-file limit for new logins (current shell: ulimit -n 1048576)" \
  "printf '* soft nofile 1048576\n* hard nofile 1048576\n' > /etc/security/limits.d/90-parley.conf"
if [ "$apply" = 0 ]; then
  echo "# dry run: nothing changed. Re-run as root with --apply."
fi
