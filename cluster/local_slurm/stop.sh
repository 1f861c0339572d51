#!/usr/bin/env bash
# Stop the one-host SLURM cluster started by cluster/local_slurm/start.sh [DIR]: cancel its jobs,
# then end exactly the daemons named in DIR/run/*.pid (checking each pid's command line, so a
# recycled pid is never hit). Safe to run when nothing is running.
#
#   cluster/local_slurm/stop.sh [DIR]     DIR defaults to <project>/.cache/slurm
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
project_root=$(cd "$script_dir/../.." && pwd)
cluster_dir=${1:-$project_root/.cache/slurm}
if [[ ! -d $cluster_dir/run ]]; then
    echo "stop.sh: no cluster state in $cluster_dir (nothing to stop)"
    exit 0
fi
cluster_dir=$(cd "$cluster_dir" && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
export SLURM_CONF=$cluster_dir/slurm.conf
stop_timeout_s=15

# The pid in $1 if it is alive and its command line contains $2, else nothing.
live_pid() {
    local pid_file=$1 expected_command=$2 pid
    [[ -f $pid_file ]] || return 0
    pid=$(<"$pid_file")
    if [[ -n $pid && -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$expected_command"; then
        echo "$pid"
    fi
}

# Jobs first: their slurmstepd processes would outlive the slurmd that started them.
if [[ -n $(live_pid "$cluster_dir/run/slurmctld.pid" slurmctld) ]]; then
    job_ids=$(squeue --noheader --format=%i 2>/dev/null || true)
    if [[ -n $job_ids ]]; then
        # shellcheck disable=SC2086  # one argument per job id
        scancel $job_ids 2>/dev/null || true
        deadline=$((SECONDS + stop_timeout_s))
        while [[ -n $(squeue --noheader --states=RUNNING,COMPLETING --format=%i 2>/dev/null) ]] && (( SECONDS < deadline )); do
            sleep 0.5
        done
    fi
fi

pids=()
for pid_file in "$cluster_dir"/run/slurmd-*.pid; do
    [[ -e $pid_file ]] || continue
    pid=$(live_pid "$pid_file" slurmd)
    [[ -n $pid ]] && pids+=("$pid")
done
pid=$(live_pid "$cluster_dir/run/slurmctld.pid" slurmctld)
[[ -n $pid ]] && pids+=("$pid")
pid=$(live_pid "$cluster_dir/run/munged.pid" munged)
[[ -n $pid ]] && pids+=("$pid")

if [[ ${#pids[@]} -gt 0 ]]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    deadline=$((SECONDS + stop_timeout_s))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "stop.sh: pid $pid did not end after SIGTERM; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
fi
rm -f "$cluster_dir"/run/*.pid
echo "SLURM cluster in $cluster_dir stopped"
