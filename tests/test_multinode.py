"""Launching on several nodes (run_train.sh, scripts/multinode.slurm) and what a multi-rank step communicates.

The launch checks and the SLURM script run against a stand-in interpreter that records torchrun's arguments
(seconds); the `slow` tests train: two torchrun "nodes" on this machine, and 2 gloo ranks with gradient
accumulation counting the collectives of the exactness check and of plan agreement.
"""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest
from train_helpers import REPO, base_toml, env, losses, run_train

RUN_TRAIN = REPO / "run_train.sh"
SLURM = REPO / "scripts" / "multinode.slurm"


def _stub(path: Path, body: str) -> Path:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def recorder(tmp_path):
    """A PYTHON for run_train.sh that records its arguments, one per line, in $ARGS_OUT, instead of torchrun."""
    return _stub(tmp_path / "python", 'printf "%s\\n" "$@" > "$ARGS_OUT"\n')


def _launch(tmp_path, recorder, **settings) -> tuple[subprocess.CompletedProcess, list[str] | None]:
    out = tmp_path / "args.txt"
    out.unlink(missing_ok=True)
    e = env({"PYTHON": str(recorder), "ARGS_OUT": str(out), "NGPU": "1", **settings})
    r = subprocess.run(
        ["bash", str(RUN_TRAIN), "--training.steps", "5"], cwd=REPO, env=e, text=True, capture_output=True, timeout=60
    )
    return r, (out.read_text().splitlines() if out.exists() else None)


@pytest.mark.parametrize(
    "settings, says",
    [
        ({"NNODES": "2"}, "NNODES=2 needs a rendezvous address"),
        ({"NNODES": "two"}, "NNODES=two: must be a whole number"),
        ({"NNODES": "0"}, "NNODES=0: must be a whole number >= 1"),
        ({"NNODES": "2", "MASTER_ADDR": "node0", "NODE_RANK": "2"}, "NODE_RANK=2 with NNODES=2: node ranks are 0 .. 1"),
        ({"NODE_RANK": "1"}, "NODE_RANK=1 with NNODES=1"),
        ({"NNODES": "2", "MASTER_ADDR": "node0", "NODE_RANK": "-1"}, "NODE_RANK=-1: must be a whole number"),
        ({"NNODES": "2", "MASTER_ADDR": "node0"}, "NODE_RANK is not set"),
        ({"NNODES": "2", "MASTER_ADDR": "node0", "RDZV_ENDPOINT": "node0:29500"}, "both set"),
        ({"NNODES": "2", "NODE_RANK": "0", "MASTER_PORT": "29500"}, "MASTER_PORT=29500 is set without MASTER_ADDR"),
        (
            {"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "node0", "MASTER_PORT": "http"},
            "MASTER_PORT=http: must be a port number",
        ),
        (
            {"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "node0", "MASTER_PORT": "70000"},
            "MASTER_PORT=70000: must be a port number",
        ),
        ({"NNODES": "2", "RDZV_ENDPOINT": "node0"}, "RDZV_ENDPOINT=node0: must be host:port"),
        ({"RDZV_ID": "7"}, "RDZV_ID=7 is set without RDZV_ENDPOINT"),
        ({"NGPU": "1.5"}, "NGPU=1.5: must be a whole number"),
        ({"LOG_RANK": "all"}, "LOG_RANK=all: must be local rank numbers"),
    ],
)
def test_bad_launch_settings_refused_before_torchrun(tmp_path, recorder, settings, says):
    r, args = _launch(tmp_path, recorder, **settings)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert args is None  # torchrun never started
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("run_train.sh: ") and says in r.stderr, r.stderr


def test_one_node_by_default(tmp_path, recorder):
    r, args = _launch(tmp_path, recorder)
    assert r.returncode == 0, r.stderr
    assert args[:2] == ["-m", "torch.distributed.run"]
    assert "--nnodes=1" in args and "--rdzv_endpoint=localhost:0" in args and "--rdzv_backend" in args
    assert not any(a.startswith(("--master_addr", "--node_rank")) for a in args)
    assert args[-6:] == ["-m", "adahop.train", "--job.config_file", "configs/default.toml", "--training.steps", "5"]


def test_one_node_leaves_the_shells_master_addr_and_port_unused(tmp_path, recorder):
    """Cluster shells often export MASTER_ADDR / MASTER_PORT for every job: one node keeps its free localhost
    port (with a one-line notice) instead of waiting at an address nobody serves."""
    r, args = _launch(tmp_path, recorder, MASTER_ADDR="10.255.255.1", MASTER_PORT="29501")
    assert r.returncode == 0, r.stderr
    assert "--rdzv_endpoint=localhost:0" in args and not any(a.startswith("--master_") for a in args)
    assert len(r.stderr.splitlines()) == 1 and "not used" in r.stderr, r.stderr


def test_static_rendezvous_from_master_addr(tmp_path, recorder):
    r, args = _launch(tmp_path, recorder, NNODES="4", NODE_RANK="3", MASTER_ADDR="10.1.2.3", MASTER_PORT="29601")
    assert r.returncode == 0, r.stderr
    assert {"--nnodes=4", "--node_rank=3", "--master_addr=10.1.2.3", "--master_port=29601"} <= set(args)
    assert not any("rdzv" in a for a in args)  # torchrun's default, the static rendezvous
    r, args = _launch(tmp_path, recorder, NNODES="2", NODE_RANK="0", MASTER_ADDR="node0")
    assert "--master_port=29500" in args


def test_c10d_rendezvous_from_rdzv_endpoint(tmp_path, recorder):
    r, args = _launch(tmp_path, recorder, NNODES="2", RDZV_ENDPOINT="node0:29400")
    assert r.returncode == 0, r.stderr
    assert {"--nnodes=2", "--rdzv_endpoint=node0:29400", "--rdzv_id=adahop"} <= set(args)
    assert args[args.index("--rdzv_backend") + 1] == "c10d" and "--rdzv_conf" not in args
    for rank, host in (("0", "is_host=1"), ("1", "is_host=0")):
        r, args = _launch(tmp_path, recorder, NNODES="2", NODE_RANK=rank, RDZV_ENDPOINT="node0:29400", RDZV_ID="j9")
        assert args[args.index("--rdzv_conf") + 1] == host and "--rdzv_id=j9" in args


def test_slurm_script_starts_run_train_on_every_node(tmp_path, recorder):
    """scripts/multinode.slurm under stand-ins for scontrol and srun (which runs its command once per node,
    as SLURM does, with that node's SLURM_NODEID): each node's torchrun joins the first node's rendezvous."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir / "scontrol", 'printf "gpu-a\\ngpu-b\\n"\n')
    _stub(
        bin_dir / "srun",
        """
if [ "$1" = "--nodes=1" ]; then
  [ "$3 $4" = "-w gpu-a" ] && [ "$5 $6" = "hostname --ip-address" ] || { echo "srun stub: $*" >&2; exit 1; }
  echo "10.0.0.7 fe80::1"; exit 0
fi
[ "$1" = "--ntasks-per-node=1" ] || { echo "srun stub: $*" >&2; exit 1; }
shift
for node in 0 1; do SLURM_NODEID=$node ARGS_OUT="$ARGS_OUT.$node" "$@" || exit; done
""",
    )
    out = tmp_path / "args"
    e = env(
        {
            "PATH": f"{bin_dir}:{env()['PATH']}",
            "PYTHON": str(recorder),
            "ARGS_OUT": str(out),
            "NGPU": "8",
            "SLURM_SUBMIT_DIR": str(REPO),
            "SLURM_JOB_NODELIST": "gpu-[a-b]",
            "SLURM_JOB_NUM_NODES": "2",
            "SLURM_JOB_ID": "4242",
        }
    )
    r = subprocess.run(
        ["bash", str(SLURM), "--training.steps", "7"], cwd=tmp_path, env=e, text=True, capture_output=True, timeout=60
    )
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "2 nodes, rendezvous 10.0.0.7:29500" in r.stdout
    for node, host in (("0", "is_host=1"), ("1", "is_host=0")):
        args = Path(f"{out}.{node}").read_text().splitlines()
        assert {"--nnodes=2", "--nproc_per_node=8", "--rdzv_endpoint=10.0.0.7:29500", "--rdzv_id=4242"} <= set(args)
        assert args[args.index("--rdzv_conf") + 1] == host
        assert args[-2:] == ["--training.steps", "7"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("rendezvous", ["MASTER_ADDR", "RDZV_ENDPOINT"])
def test_two_nodes_on_one_machine_train_the_default_config(tmp_path, rendezvous):
    """Two run_train.sh "nodes" (NNODES=2, one CPU rank each, gloo) train configs/default.toml together."""
    port = _free_port()
    where = (
        {"MASTER_ADDR": "localhost", "MASTER_PORT": str(port)}
        if rendezvous == "MASTER_ADDR"
        else {"RDZV_ENDPOINT": f"localhost:{port}"}
    )
    args = [
        "--job.dump_folder",
        str(tmp_path / "out"),
        "--training.steps",
        "3",
        "--metrics.log_freq",
        "1",
        "--quantize.linear.mx.calibration.calibration_steps",
        "1",
        "--validation.steps",
        "1",
        "--checkpoint.no-enable",
    ]
    nodes = [
        subprocess.Popen(
            ["bash", str(RUN_TRAIN), *args],
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env({"NNODES": "2", "NODE_RANK": str(rank), "NGPU": "1", **where}),
        )
        for rank in (1, 0)
    ]  # node 1 first: it waits for node 0's rendezvous
    try:
        outs = [p.communicate(timeout=300)[0] for p in nodes]
    finally:
        for p in nodes:
            p.kill()
    for p, out in zip(nodes, outs):
        assert p.returncode == 0, out[-4000:]
        assert "dp_shard=2" in out, out[-4000:]  # one FSDP group over both nodes' ranks
    l1, l0 = (losses(out) for out in outs)
    assert sorted(l0) == [1, 2, 3] and l0 == l1, (l0, l1)


COUNT_RE = re.compile(
    r"^\[default(\d+)\]:.*\[adahop-debug\] step (\d+): microbatches (\d+), exactness all_reduce "
    r"(\d+), plan collectives (\d+), calibrating ([01])",
    re.M,
)


@pytest.mark.slow
def test_one_exactness_all_reduce_per_step_and_plan_agreement_only_while_calibrating(tmp_path):
    """2 gloo ranks, 2 microbatches per step (global batch = 2 x local x ranks): the deferred exactness check
    all-reduces once per optimizer step, and plan agreement (adahop/calibration.py) communicates in the
    calibration steps only."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        base_toml(tmp_path / "out", steps=4, calibration_steps=2).replace(
            "local_batch_size = 2\n", "local_batch_size = 2\nglobal_batch_size = 8\n"
        )
    )
    r = run_train(cfg, nproc=2, extra_env={"ADAHOP_DEBUG_COUNT_COLLECTIVES": "1"})
    assert r.returncode == 0, r.stdout[-4000:]
    counts = {(int(m[0]), int(m[1])): tuple(map(int, m[2:])) for m in COUNT_RE.findall(r.stdout)}
    assert sorted(counts) == [(rank, step) for rank in (0, 1) for step in (1, 2, 3, 4)], r.stdout[-4000:]
    for (_rank, step), (microbatches, exactness, plan, calibrating) in counts.items():
        assert microbatches == 2
        if step <= 2:  # observed steps run the per-GEMM check (no deferred all-reduce); votes are summed
            assert (calibrating, exactness) == (1, 0) and plan >= 1, counts
        else:
            assert (calibrating, exactness, plan) == (0, 1, 0), counts
    assert losses(r.stdout, 0) == losses(r.stdout, 1)
