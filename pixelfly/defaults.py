"""The library's defaults (every signature and CLI option reads them here).

The cost model's, the block size, the low-rank share and the planner's smallest butterfly
are the C core's (``PF_DEFAULT_*`` in ``csrc/include/pixelfly.h``), read from ``_C`` so
that each is written once.

* ``BUDGET``: ``rho``, the fraction of the dense cost a plan may spend (SPEC 3).
* ``LOW_RANK_FRACTION``: ``phi``, the share of a layer's budget for the low-rank part,
  in ``[1/4, 1/3]`` (SPEC 3: default 1/4).
* ``DENSITY``: ``PixelflyLinear``'s parameter density when no layout is chosen.
* ``BLOCK_SIZE``: ``b1 = b2``, the block of the layouts (the authors' release uses 32).
* ``MACHINE_BALANCE``, ``ELEM_BYTES``: the cost model's price of touching one block is
  ``cost_mem = MACHINE_BALANCE * ELEM_BYTES * b1 * b2`` flop-equivalents: an A100's
  312 TFLOP/s (bf16) over 1.555 TB/s is ~200 FLOP/byte, bf16 is 2 bytes, so a 32 x 32
  block costs 409,600 (see ``pixelfly.costs.CostModel``).
* ``MIN_BUTTERFLY``: the smallest butterfly size the planner uses; ``n = 2`` has density
  ``(m + 1) / n = 1``, the dense layout.
"""
from pixelfly import _C

BUDGET = 0.25
DENSITY = 0.25
# The C core's defaults (csrc/include/pixelfly.h, PF_DEFAULT_*), so they are written once.
LOW_RANK_FRACTION = _C.DEFAULT_PHI
BLOCK_SIZE = _C.DEFAULT_BLOCK
MACHINE_BALANCE = _C.DEFAULT_MACHINE_BALANCE
ELEM_BYTES = _C.DEFAULT_ELEM_BYTES
MIN_BUTTERFLY = _C.PLAN_MIN_BUTTERFLY
