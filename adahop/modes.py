"""Names shared by every layer of adahop: GEMM slots, outlier labels, modes and the seed table."""

from __future__ import annotations

# The three GEMMs of a Linear (weight stored [out, in]):
#   forward_y    y  = x  @ W^T   left x [tokens, in],    right W^T [in, out],   inner K = in
#   backward_gx  gx = g  @ W     left g [tokens, out],   right W   [out, in],   inner K = out
#   backward_gw  gw = g^T @ x    left g^T [out, tokens], right x   [tokens, in], inner K = tokens
SLOTS = ("forward_y", "backward_gx", "backward_gw")

HADAMARD = "hadamard"
OE_LEFT = "inner_outlier_extract_left"
OE_RIGHT = "inner_outlier_extract_right"
FULL_PRECISION = "full_precision"
NONE = "none"
MODES = (HADAMARD, OE_LEFT, OE_RIGHT, FULL_PRECISION, NONE)

LABELS = ("row", "col", "none")
PAIR_KEYS = tuple(f"{left}-{right}" for left in LABELS for right in LABELS)

# The table the seed configuration ships with; `layer_transform_config` overrides it key by key.
SEED_TABLE = {
    "row-row": HADAMARD,
    "row-none": OE_LEFT,
    "row-col": OE_RIGHT,
    "col-row": HADAMARD,
    "col-none": HADAMARD,
    "col-col": FULL_PRECISION,
    "none-row": HADAMARD,
    "none-none": HADAMARD,
    "none-col": OE_RIGHT,
}


def check_mode(mode: str, where: str = "mode") -> str:
    """Return `mode` if it is one of MODES, else raise a ValueError naming `where` and the allowed modes."""
    if mode not in MODES:
        raise ValueError(f"{where}: unknown mode {mode!r}; allowed modes are {', '.join(MODES)}")
    return mode
