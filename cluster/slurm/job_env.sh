# shellcheck shell=bash
# Sourced by the batch scripts in cluster/slurm/ (on the job's first node): the project root, its
# virtual environment and caches, the run name and the rendezvous address every task needs.
#
# Knobs (environment variables set when calling sbatch; sbatch passes the environment on):
#   UNIFUSE_ROOT  project root (default: the directory sbatch was called from)
#   RECIPE        recipe module under recipes/ (default: gifnet)
#   CONFIG        recipe config (default: recipes/configs/$RECIPE.yaml)
#   RUN_NAME      run directory name (default: <job name>-<job id>, which a requeued job keeps,
#                 so it resumes in the same run directory and the same W&B run)
#   UNIFUSE_RUNS_DIR  parent of run directories (default: runs); the run directory is
#                 $UNIFUSE_RUNS_DIR/$RUN_NAME (the scripts pass both to the recipe)
#   MASTER_ADDR   rendezvous address (default: the SLURM NodeAddr of the job's first node)
#   PYTHON        interpreter (default: python of the project's .venv when there is one)

project_root=${UNIFUSE_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
# sbatch runs a copy of the script from its spool directory, so the project is found from where
# the job was submitted, not from the script's own path.
if [[ ! -d $project_root/recipes || ! -d $project_root/cluster ]]; then
    echo "job_env.sh: $project_root is not the unifuse project root; submit from the project root or set UNIFUSE_ROOT" >&2
    exit 1
fi
cd "$project_root" || exit 1

if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then
        PYTHON=$project_root/.venv/bin/python
        # As if activated: the venv's tools come first (its ninja builds DeepSpeed's ops; a
        # different ninja on PATH would invalidate the compiled-op cache and rebuild).
        export PATH="$project_root/.venv/bin:$PATH"
    else
        PYTHON=python
    fi
fi

# Caches inside the project, as `make` sets them; values set by the caller win.
: "${XDG_CACHE_HOME:=$project_root/.cache}"
: "${MPLCONFIGDIR:=$project_root/.cache/matplotlib}"
: "${TORCH_EXTENSIONS_DIR:=$project_root/.cache/torch_extensions}"
: "${TORCH_HOME:=$project_root/.cache/torch}"
: "${NUMBA_CACHE_DIR:=$project_root/.cache/numba}"
: "${HF_HOME:=$project_root/.cache/huggingface}"
: "${WANDB_CACHE_DIR:=$project_root/.cache/wandb}"
: "${WANDB_CONFIG_DIR:=$project_root/.cache/wandb-config}"
: "${WANDB_MODE:=offline}"
export XDG_CACHE_HOME MPLCONFIGDIR TORCH_EXTENSIONS_DIR TORCH_HOME NUMBA_CACHE_DIR HF_HOME WANDB_CACHE_DIR WANDB_CONFIG_DIR WANDB_MODE
export PYTHONUNBUFFERED=1

RECIPE=${RECIPE:-gifnet}
CONFIG=${CONFIG:-recipes/configs/$RECIPE.yaml}
if [[ ! -f $CONFIG ]]; then
    echo "job_env.sh: config $CONFIG not found (relative to $project_root); set CONFIG to a file in recipes/configs/" >&2
    exit 1
fi
RUN_NAME=${RUN_NAME:-$SLURM_JOB_NAME-$SLURM_JOB_ID}
RUNS_DIR=${UNIFUSE_RUNS_DIR:-runs}
RUN_DIR=$RUNS_DIR/$RUN_NAME

# Lightning takes devices per node from --ntasks-per-node and refuses a bare --ntasks.
if [[ -z ${SLURM_NTASKS_PER_NODE:-} ]]; then
    echo "job_env.sh: submit with --ntasks-per-node=<GPUs per node> (Lightning rejects a bare --ntasks)" >&2
    exit 1
fi

# Lightning would take the first node's *name* from SLURM_JOB_NODELIST, but a node name need not
# resolve (it does not on the one-host test cluster); the address SLURM itself uses does.
if [[ -z ${MASTER_ADDR:-} ]]; then
    first_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    MASTER_ADDR=$(scontrol show node "$first_node" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
    MASTER_ADDR=${MASTER_ADDR:-$first_node}
fi
export MASTER_ADDR

echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST: run $RUN_NAME," \
     "recipe $RECIPE, config $CONFIG, $SLURM_JOB_NUM_NODES node(s) x ${SLURM_NTASKS_PER_NODE} task(s), master $MASTER_ADDR"

# The modification time of the run's newest checkpoint file (empty: none yet). A DeepSpeed
# checkpoint is a directory named *.ckpt; its files count.
newest_checkpoint_time() {
    # (no run directory yet is no checkpoint, not an error that would end the script under set -e)
    { find "$RUN_DIR" \( -name '*.ckpt' -o -path '*.ckpt/*' \) -type f -printf '%T@\n' 2>/dev/null || true; } |
        sort -n | tail -n 1
}

# Called with srun's exit status when the training step failed (a task died: killed, out of memory,
# a crash; --kill-on-bad-exit has then ended the other tasks). SLURM requeues a job by itself only
# when a node fails, so the script does: if the run saved a checkpoint since this start
# ($checkpoint_time_at_start), the job requeues itself and resumes from the newest save; otherwise
# it fails with srun's status, so an error that recurs before the first save cannot loop forever.
requeue_after_failed_step() {
    local status=$1 job_id=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
    job_id=${job_id:-$SLURM_JOB_ID}
    if [[ $(newest_checkpoint_time) == "${checkpoint_time_at_start:-}" ]]; then
        echo "job $job_id: the training step failed (status $status) with no new checkpoint in $RUN_DIR" \
             "since this start: not requeued" >&2
        exit "$status"
    fi
    echo "job $job_id: the training step failed (status $status); requeueing to resume from the newest checkpoint in $RUN_DIR" >&2
    if ! scontrol requeue "$job_id"; then
        echo "job $job_id: scontrol requeue failed; resume with the same RUN_NAME and --ckpt_path last" >&2
        exit "$status"
    fi
    exit 0
}
