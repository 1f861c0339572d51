#!/usr/bin/env bash
# Install Debian's SLURM daemons and munge, which the one-host test cluster (cluster/local_slurm/) runs.
#
# Idempotent and quiet: does nothing when slurmctld, slurmd, munged and the client commands are
# already on PATH, so `make test` can call it every time. Needs root (or passwordless sudo) for
# apt-get when something is missing; on a machine without apt-get it says what to install instead.
set -euo pipefail

required_commands=(slurmctld slurmd munged sbatch srun scontrol squeue)

missing=()
for command_name in "${required_commands[@]}"; do
    # Debian puts the daemons in /usr/sbin, which a non-login shell may lack on PATH.
    if ! command -v "$command_name" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$command_name" ]]; then
        missing+=("$command_name")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_slurm.sh: missing ${missing[*]}, and there is no apt-get here;" \
         "install SLURM (slurmctld, slurmd, client commands) and munge with your package manager." >&2
    exit 1
fi

as_root=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install_slurm.sh: missing ${missing[*]}; run this script as root to install them." >&2
        exit 1
    fi
    as_root=(sudo)
fi

echo "install_slurm.sh: installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})" >&2
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
# --no-install-recommends keeps out the mail and X11 extras; the test cluster needs none of them.
"${as_root[@]}" apt-get install -qq -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
