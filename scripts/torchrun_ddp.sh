#!/bin/bash
# DDP with torchrun (no SLURM): one process per GPU on each node; Lightning reads the
# rank and world size torchrun sets (TorchElasticEnvironment). Details: docs/scaling.md.
#
#   scripts/torchrun_ddp.sh configs/darcy.yaml                        # one node, all GPUs
#   NNODES=2 NODE_RANK=0 MASTER=node0:29500 scripts/torchrun_ddp.sh   # on node0
#   NNODES=2 NODE_RANK=1 MASTER=node0:29500 scripts/torchrun_ddp.sh   # on node1
set -euo pipefail
CONFIG=${1:-configs/drivaerml_1m.yaml}
shift || true
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER=${MASTER:-localhost:29500}
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l || true)}   # processes (GPUs) per node
if [ "${GPUS:-0}" -lt 1 ]; then
    echo "torchrun_ddp.sh: no GPU found by nvidia-smi; set GPUS=<processes per node>" >&2
    exit 1
fi

torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS" \
    --rdzv_backend c10d --rdzv_endpoint "$MASTER" \
    -m flare_lightning fit --config "$CONFIG" \
    --trainer.accelerator gpu --trainer.strategy ddp \
    --trainer.devices "$GPUS" --trainer.num_nodes "$NNODES" "$@"
