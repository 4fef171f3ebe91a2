"""The library's defaults, written once (every signature and CLI option reads them here).

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
BUDGET = 0.25
LOW_RANK_FRACTION = 0.25
DENSITY = 0.25
BLOCK_SIZE = 32
MACHINE_BALANCE = 200.0
ELEM_BYTES = 2
MIN_BUTTERFLY = 4
