#!/usr/bin/env bash
# Train with adahop on upstream torchtitan (torchrun; one process per GPU, or CPU ranks over gloo).
#   ./run_train.sh                                   # configs/default.toml, all GPUs (or 1 CPU rank)
#   NGPU=2 CONFIG_FILE=configs/default.toml ./run_train.sh --training.steps 50
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 ./run_train.sh   # on node0, and NODE_RANK=1 on the other node
# Extra arguments are torchtitan CLI overrides (--section.key value).
# NGPU: ranks to start on this node (default: number of CUDA GPUs, or 1 without GPU). LOG_RANK: local ranks
# whose output is shown (default 0; e.g. LOG_RANK=0,1). PYTHON: interpreter (default python, else python3).
# Nodes (default: this node alone, rendezvous on a free localhost port):
#   NNODES            number of nodes (default 1); every node runs this script with the same settings
#   MASTER_ADDR, MASTER_PORT (default 29500), NODE_RANK
#                     (with NNODES > 1; one node leaves them unused) static rendezvous at
#                     MASTER_ADDR:MASTER_PORT, served by node 0; node NODE_RANK
#                     (0..NNODES-1) gets the global ranks NODE_RANK*NGPU .. NODE_RANK*NGPU+NGPU-1
#   RDZV_ENDPOINT=host:port, RDZV_ID (default adahop)
#                     c10d rendezvous (what scripts/multinode.slurm uses); ranks are handed out in
#                     order of arrival; NODE_RANK, if set, makes node 0 the one that serves the rendezvous
set -euo pipefail

die() { echo "run_train.sh: $*" >&2; exit 2; }
uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# every launch setting is checked before torchrun starts: a wrong one would otherwise hang in the
# rendezvous (a node waiting for peers that never come) or fail deep inside torchrun
NNODES=${NNODES:-1}
uint "$NNODES" && [ "$NNODES" -ge 1 ] ||
  die "NNODES=$NNODES: must be a whole number >= 1 (the number of nodes); unset it for one node"
if [ "$NNODES" -eq 1 ] && [ -n "${MASTER_ADDR:-}${MASTER_PORT:-}" ]; then
  # cluster shells often export these for every job: one node keeps to a free localhost port, as it always has
  echo "run_train.sh: one node (NNODES unset or 1): MASTER_ADDR / MASTER_PORT from the environment are not used;" \
    "set NNODES to train on several nodes" >&2
  unset MASTER_ADDR MASTER_PORT
fi
if [ -n "${NODE_RANK:-}" ]; then
  uint "$NODE_RANK" || die "NODE_RANK=$NODE_RANK: must be a whole number, 0 .. NNODES-1"
  [ "$NODE_RANK" -lt "$NNODES" ] ||
    die "NODE_RANK=$NODE_RANK with NNODES=$NNODES: node ranks are 0 .. $((NNODES - 1)); set NNODES to the number of nodes"
fi
if [ -n "${MASTER_ADDR:-}" ] && [ -n "${RDZV_ENDPOINT:-}" ]; then
  die "MASTER_ADDR and RDZV_ENDPOINT are both set: set MASTER_ADDR (static rendezvous, with NODE_RANK) or RDZV_ENDPOINT (c10d rendezvous), not both"
fi
if [ -n "${MASTER_PORT:-}" ]; then
  uint "$MASTER_PORT" && [ "$MASTER_PORT" -ge 1 ] && [ "$MASTER_PORT" -le 65535 ] ||
    die "MASTER_PORT=$MASTER_PORT: must be a port number, 1 .. 65535"
  [ -n "${MASTER_ADDR:-}" ] ||
    die "MASTER_PORT=$MASTER_PORT is set without MASTER_ADDR: set MASTER_ADDR too (node 0's address), or unset MASTER_PORT (one node picks a free port)"
fi
if [ -n "${RDZV_ENDPOINT:-}" ]; then
  [[ $RDZV_ENDPOINT =~ ^.+:([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -le 65535 ] ||
    die "RDZV_ENDPOINT=$RDZV_ENDPOINT: must be host:port (e.g. node0:29500)"
elif [ -n "${RDZV_ID:-}" ]; then
  die "RDZV_ID=$RDZV_ID is set without RDZV_ENDPOINT: it names a c10d rendezvous; set RDZV_ENDPOINT too, or unset RDZV_ID"
fi
if [ "$NNODES" -gt 1 ]; then
  [ -n "${MASTER_ADDR:-}${RDZV_ENDPOINT:-}" ] ||
    die "NNODES=$NNODES needs a rendezvous address that every node reaches: MASTER_ADDR=<node 0's address> (with NODE_RANK on each node) or RDZV_ENDPOINT=<host:port>"
  [ -z "${MASTER_ADDR:-}" ] || [ -n "${NODE_RANK:-}" ] ||
    die "NODE_RANK is not set: with MASTER_ADDR each of the NNODES=$NNODES nodes needs its own NODE_RANK (0 on the node at MASTER_ADDR)"
fi
if [ -n "${NGPU:-}" ]; then
  uint "$NGPU" && [ "$NGPU" -ge 1 ] || die "NGPU=$NGPU: must be a whole number >= 1 (ranks on this node)"
fi
LOG_RANK=${LOG_RANK:-0}
[[ $LOG_RANK =~ ^[0-9]+(,[0-9]+)*$ ]] || die "LOG_RANK=$LOG_RANK: must be local rank numbers separated by commas (e.g. 0 or 0,1)"

if [ -z "${PYTHON:-}" ]; then
  if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
for arg in "$@"; do
  case $arg in --job.config_file | --job.config_file=* | --job.config-file | --job.config-file=*)
    die "$arg: the config file is CONFIG_FILE here (this script passes --job.config_file itself, and the first one given wins): run CONFIG_FILE=<toml> ./run_train.sh [overrides]" ;;
  esac
done
CONFIG_FILE=${CONFIG_FILE:-"configs/default.toml"}
if [ -z "${NGPU:-}" ]; then
  NGPU=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 1)")
  [ "$NGPU" -ge 1 ] 2>/dev/null || NGPU=1
fi

if [ -n "${MASTER_ADDR:-}" ]; then
  rendezvous=(--node_rank="${NODE_RANK:-0}" --master_addr="$MASTER_ADDR" --master_port="${MASTER_PORT:-29500}")
elif [ -n "${RDZV_ENDPOINT:-}" ]; then
  rendezvous=(--rdzv_backend c10d --rdzv_endpoint="$RDZV_ENDPOINT" --rdzv_id="${RDZV_ID:-adahop}")
  if [ -n "${NODE_RANK:-}" ]; then
    # otherwise torchrun guesses from the host name, which fails where RDZV_ENDPOINT is an address it
    # does not recognize as its own
    rendezvous+=(--rdzv_conf "is_host=$([ "$NODE_RANK" -eq 0 ] && echo 1 || echo 0)")
  fi
else
  rendezvous=(--rdzv_backend c10d --rdzv_endpoint="localhost:0")
fi
# every check of the config (and of a resumed checkpoint) in one process first: bad input is then one message,
# not one per rank under torchrun's failure report
"$PYTHON" -m adahop.train --preflight $((NNODES * NGPU)) --job.config_file "$CONFIG_FILE" "$@" || exit $?
# as upstream torchtitan's launcher: fewer fragmented blocks in the CUDA caching allocator
export PYTORCH_ALLOC_CONF=${PYTORCH_ALLOC_CONF:-"expandable_segments:True"}

exec "$PYTHON" -m torch.distributed.run \
  --nnodes="$NNODES" --nproc_per_node="$NGPU" "${rendezvous[@]}" \
  --local-ranks-filter "$LOG_RANK" --role rank --tee 3 \
  -m adahop.train --job.config_file "$CONFIG_FILE" "$@"
