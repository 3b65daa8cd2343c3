# shellcheck shell=bash
# The steps of bench case 1 (deploy the demo) as plain bash functions that run ON the host.
#
# bench/floor.sh runs all of them in ONE ssh session (the floor); bench/ansible/deploy.yml runs
# one per task. They do what `inv deploy` does, the way a careful person writes it by hand:
# lock, deliver the commit from a git bundle, purge __pycache__, stop (supervisor first: it stops
# its API child; TERM, wait, KILL; prove no API is left), start with condition-polling waits
# (ready lines written after this start, the API's health), verify, record + journal, unlock.
# Every wait polls its condition every 20 ms and has a timeout. Nothing here is specific to the
# bench except the demo's command lines.

POLL=0.02

_now_us() { echo "${EPOCHREALTIME/./}"; }

_wait() { # TIMEOUT_S WHAT COMMAND...: poll COMMAND until it succeeds; status 2 from it = give up now
    local timeout=$1 what=$2 rc deadline
    shift 2
    deadline=$(($(_now_us) + timeout * 1000000))
    while :; do
        "$@" && return 0
        rc=$?
        if ((rc == 2)); then
            echo "failed: $what" >&2
            return 1
        fi
        if (($(_now_us) >= deadline)); then
            echo "timed out after ${timeout}s waiting for: $what" >&2
            return 1
        fi
        sleep "$POLL"
    done
}

_alive() { # PID: exists and is not a zombie (an orphan's zombie lingers where PID 1 does not reap)
    local stat
    read -r stat <"/proc/$1/stat" 2>/dev/null || return 1
    stat=${stat##*) }
    [ "${stat:0:1}" != Z ]
}
_dead() { ! _alive "$1"; }
_size() { stat -c %s "$1" 2>/dev/null || echo 0; }
_no_api() { ! pgrep -f "examples/demo/api[.]py --port $1( |\$)" >/dev/null; }
_healthy() { curl -fsS --max-time 1 "http://127.0.0.1:$1/health" 2>/dev/null | grep -q '"status": "ok"'; }

_ready() { # PID LOG OFFSET PATTERN: the pattern in a line written after OFFSET (2: the pid died)
    _alive "$1" || return 2
    tail -c "+$(($3 + 1))" "$2" 2>/dev/null | grep -q -- "$4"
}

_spawn() { # CHECKOUT STATE NAME LOG ENV_FILE CMD...: own session, output to LOG, pid recorded
    local co=$1 state=$2 name=$3 log=$4 env_file=$5
    shift 5
    (
        cd "$co" || exit 1
        if [ -n "$env_file" ]; then # secrets come from a file on the host, never from argv
            set -a
            . "$env_file"
            set +a
        fi
        exec setsid "$@" >>"$log" 2>&1 </dev/null
    ) &
    echo $! >"$state/$name.pid"
}

_stop() { # STATE NAME: TERM the process group, wait, KILL
    local pidf="$1/$2.pid" pid
    [ -f "$pidf" ] || return 0
    pid=$(cat "$pidf")
    if _alive "$pid"; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        if ! _wait 3 "$2 (pid $pid) to exit" _dead "$pid"; then
            kill -KILL -- "-$pid" 2>/dev/null || true
            _wait 5 "$2 (pid $pid) to die" _dead "$pid" || return 1
        fi
    fi
    rm -f "$pidf"
}

step_lock() { # STATE
    mkdir -p "$1/logs"
    mkdir "$1/lock" 2>/dev/null || {
        echo "the deploy lock $1/lock is held" >&2
        return 4
    }
}

step_unlock() { rmdir "$1/lock" 2>/dev/null || true; }

step_deliver() { # CHECKOUT BUNDLE COMMIT
    local co=$1 bundle=$2 commit=$3
    if [ ! -d "$co/.git" ]; then
        mkdir -p "$co" && git -C "$co" init -q || return 1
    fi
    if [ -n "$(git -C "$co" status --porcelain --untracked-files=no)" ]; then
        echo "the checkout $co has local changes" >&2
        return 1
    fi
    git -C "$co" fetch -q --no-tags "$bundle" HEAD &&
        git -C "$co" -c advice.detachedHead=false checkout -q --detach "$commit" &&
        rm -f "$bundle"
}

step_purge() { find "$1" -name .git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +; }

step_stop() { # STATE PORT: the supervisor first (it stops its API child), then the worker
    _stop "$1" daemon && _wait 5 "no API left on port $2" _no_api "$2" && _stop "$1" worker
}

step_start_daemon() { # CHECKOUT STATE PORT
    local log="$2/logs/daemon.log" off
    off=$(_size "$log")
    _spawn "$1" "$2" daemon "$log" "$1/examples/demo/secrets/demo.env" \
        python3 examples/demo/daemon.py auto --api-port "$3" --api-log "$2/logs/api.log"
    _wait 15 "the daemon's ready line" _ready "$(cat "$2/daemon.pid")" "$log" "$off" "auto-answering"
}

step_check_api() { _wait 15 "the API's health on port $1" _healthy "$1"; } # PORT

step_start_worker() { # CHECKOUT STATE
    local log="$2/logs/worker.log" off
    off=$(_size "$log")
    _spawn "$1" "$2" worker "$log" "" python3 examples/demo/worker.py --heartbeat "$2/hb.json"
    _wait 15 "the worker's ready line" _ready "$(cat "$2/worker.pid")" "$log" "$off" "worker ready"
}

step_verify() { # STATE PORT COMMIT: both alive, the API healthy and running this commit
    _alive "$(cat "$1/daemon.pid")" && _alive "$(cat "$1/worker.pid")" &&
        curl -fsS --max-time 2 "http://127.0.0.1:$2/health" | grep -q "\"commit\": \"$3\""
}

step_record() { # STATE COMMIT
    local prev
    prev=$(cat "$1/current" 2>/dev/null || true)
    echo "$2" >"$1/current.tmp" && mv -f "$1/current.tmp" "$1/current" &&
        printf '{"at": %s, "from": "%s", "to": "%s", "outcome": "ok"}\n' "${EPOCHREALTIME}" "$prev" "$2" \
            >>"$1/journal.jsonl"
}

deploy_all() { # CHECKOUT STATE PORT COMMIT, the bundle on stdin: every step, in order
    local co=$1 state=$2 port=$3 commit=$4
    step_lock "$state" || return
    trap 'step_unlock "'"$state"'"' EXIT
    cat >"$state/deploy.bundle" &&
        step_deliver "$co" "$state/deploy.bundle" "$commit" &&
        step_purge "$co" &&
        step_stop "$state" "$port" &&
        step_start_daemon "$co" "$state" "$port" &&
        step_check_api "$port" &&
        step_start_worker "$co" "$state" &&
        step_verify "$state" "$port" "$commit" &&
        step_record "$state" "$commit"
}
