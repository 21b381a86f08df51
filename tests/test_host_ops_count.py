"""scripts/host_ops_count.py: the host work of one linear counted on the fast path (forced on here, the
kernels on the interpreter), against what the design says it must be."""

import re
import subprocess
import sys

from train_helpers import REPO, env


def counts(extra_env=None, modes=("hadamard", "full_precision")):
    e = env()
    e.update(extra_env or {})
    r = subprocess.run(
        [sys.executable, "scripts/host_ops_count.py", "--tokens", "128", "--features", "256", "--modes", *modes],
        cwd=REPO,
        env=e,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {}
    for line in r.stdout.splitlines():
        m = re.match(r"\| (\w+) \| (\d+) / (\d+) \| (\d+) / (\d+) \| (\d+) / (\d+) \| (\d+) / (\d+) \|", line)
        if m:
            rows[m.group(1)] = tuple(map(int, m.groups()[1:]))
    assert set(rows) == set(modes), r.stdout
    return rows


def test_launches_and_gemms_of_one_linear():
    rows = counts()
    fl, bl, fg, bg = rows["hadamard"][:4]
    # forward: x along K, W along K, x^T kept for backward; one GEMM. backward: the two gradient GEMMs and
    # the input gradient's row recomputation (one more GEMM); W^T, g with row flags, the row slots, the row
    # split, g^T and the re-encode of x^T.
    assert (fl, fg, bg) == (3, 1, 3) and bl == 6
    assert rows["full_precision"][:4] == (0, 0, 0, 0)  # BF16 GEMMs only: nothing quantized, no fp8 GEMM
