#!/usr/bin/env bash
# The floor of bench case 1: deploy the demo by hand, as fast as a careful person can, over ONE
# ssh connection with ONE remote command. Same steps as `inv deploy` (bench/deploy_steps.sh):
# lock, deliver the commit (a git bundle on the session's stdin), purge, stop, start with
# condition-polling waits, verify, record + journal, unlock.
#
#   bench/floor.sh SSH_CONFIG HOST REPO CHECKOUT STATE_DIR API_PORT
#
# It ships a full bundle of HEAD (the demo repo is tiny; `inv deploy` ships an incremental one).
# FLOOR_SSH_OPTS adds ssh options (word-split), e.g. "-o KexAlgorithms=curve25519-sha256".
set -euo pipefail

if [ $# -ne 6 ]; then
    echo "usage: $0 SSH_CONFIG HOST REPO CHECKOUT STATE_DIR API_PORT" >&2
    exit 2
fi
ssh_config=$1 host=$2 repo=$3 checkout=$4 state=$5 port=$6
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

commit=$(git -C "$repo" rev-parse HEAD)
bundle=$(mktemp)
trap 'rm -f "$bundle"' EXIT
git -C "$repo" bundle create -q "$bundle" HEAD

# The remote command: the step functions' source, then one call. Arguments are quoted with %q.
# shellcheck source=bench/deploy_steps.sh
. "$here/deploy_steps.sh"
remote="$(declare -p POLL); $(declare -f); deploy_all $(printf '%q ' "$checkout" "$state" "$port" "$commit")"
# shellcheck disable=SC2086
ssh -F "$ssh_config" -o BatchMode=yes ${FLOOR_SSH_OPTS:-} "$host" "$remote" <"$bundle"
