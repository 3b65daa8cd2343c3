#!/bin/sh
# Bench service for fan-out: as small as a service gets (a shell and a sleep), so that 30 of them
# on a 2-core machine measure the tool's fan-out, not the CPU cost of 30 Python start-ups.
#     sh tiny.sh STATE_DIR     (STATE_DIR only makes the command line unique per host)
trap 'exit 0' TERM
echo "tiny ready $$"
while :; do sleep 3600 & wait $!; done
