#!/usr/bin/env bash
# poolcli from cron, without flock: poolcli locks its own output, so a run that finds the previous one still
# going exits 75 at once, touching nothing. This wrapper turns that into a quiet skip; the next tick resumes
# whatever is left (committed parts are never recomputed; a finished output is a no-op, exit 0).
#
#   cron.sh POOLCLI-ARGS...        e.g.  cron.sh embed /data/docs.jsonl -o /data/out/docs/
#
# crontab, every 15 minutes; stdout (summaries and skips) goes to a log, stderr (failures only) to cron's mail:
#
#   */15 * * * *  cd /srv/embeddings && ./examples/cron.sh embed data/docs.jsonl -o out/docs/ >> logs/poolcli.log
#
# A finished output is a no-op on later ticks (exit 0, a summary with status "already complete"). If the input is
# replaced between ticks, add --overwrite: the fingerprint covers the input's size and mtime, and a different
# input is exit 78 otherwise.
#
# cron's PATH is short: put poolcli's directory on it in the crontab (PATH=/srv/venv/bin:/usr/bin:/bin) or set
# POOLCLI=/srv/venv/bin/poolcli.
#
# Exit status:   0    done (the summary line goes to stdout; bad input rows, if any, also get a line on stderr),
#                     or skipped because another run holds the output
#                75   never: that is the skip
#                else poolcli's own code (see docs/exit-codes.md), with poolcli's message and a line
#                     naming the command on stderr. After 130/143 (stopped by a signal) and 137 (killed) the
#                     next tick resumes by itself, after 74 (I/O: disk full) once there is room; the others
#                     (64 usage, 65 data, 66 no input, 73 cannot create, 78 config, 70 internal) need a person.
set -u

poolcli=${POOLCLI:-poolcli}
if [ $# -eq 0 ]; then
    echo "usage: $0 POOLCLI-ARGS...   (e.g. $0 embed docs.jsonl -o out/docs/)" >&2
    exit 64
fi

err=$(mktemp "${TMPDIR:-/tmp}/poolcli-cron.XXXXXX") || exit 73
trap 'rm -f "$err"' EXIT

$poolcli "$@" 2>"$err"
rc=$?
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
case $rc in
    0)
        # poolcli's stderr: warnings, if any, and the JSON summary line (rows, errors, parts_skipped, ...).
        sed "s/^/$now /" "$err"
        if grep -q '^{"poolcli": "summary".*"errors": [1-9]' "$err"; then
            echo "$now poolcli $* finished with error rows: see the errors_file in its summary" >&2
        fi
        ;;
    75)
        echo "$now skipped: another poolcli run holds the output of: poolcli $*"
        rc=0
        ;;
    *)
        cat "$err" >&2
        echo "$now poolcli $* failed with exit $rc" >&2
        ;;
esac
exit $rc
