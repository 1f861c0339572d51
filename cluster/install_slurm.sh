#!/usr/bin/env bash
# Install Debian's SLURM daemons and munge, which the one-host test cluster (cluster/local_slurm/) runs.
#
# Idempotent and quiet: does nothing when slurmctld, slurmd, munged and the client commands are
# already there, so `make test` calls it every time. Installing needs apt-get and root (or
# passwordless sudo). Where that is not possible it says so and exits 0, and the SLURM tests skip
# themselves; in CI (CI=true) it fails instead, because there the SLURM tests must run.
set -euo pipefail

required_commands=(slurmctld slurmd munged sbatch srun scontrol squeue)
packages=(slurmctld slurmd slurm-client munge)

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

cannot_install() {
    echo "install_slurm.sh: missing ${missing[*]}; $1" >&2
    if [[ ${CI:-} == true ]]; then
        exit 1
    fi
    echo "install_slurm.sh: the SLURM cluster tests will be skipped" >&2
    exit 0
}

if ! command -v apt-get >/dev/null 2>&1; then
    cannot_install "there is no apt-get here: install SLURM (slurmctld, slurmd, client commands) and munge with your package manager"
fi
as_root=()
if [[ $(id -u) -ne 0 ]]; then
    # -n: never prompt for a password (make test runs unattended).
    if ! command -v sudo >/dev/null 2>&1 || ! sudo -n true 2>/dev/null; then
        cannot_install "run 'sudo cluster/install_slurm.sh' to install ${packages[*]}"
    fi
    as_root=(sudo -n)
fi

echo "install_slurm.sh: installing ${packages[*]} (missing: ${missing[*]})" >&2
# env: sudo would drop DEBIAN_FRONTEND, and debconf must not ask anything.
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
# --no-install-recommends keeps out the mail and X11 extras; the test cluster needs none of them.
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -qq -y --no-install-recommends "${packages[@]}" >/dev/null
