"""The seed paper's tables at laptop scale (issue 15): ``python -m pixelfly.experiments cv|lm|ntk``.

* ``cv``  : Fashion-MNIST, MLP-Mixer and ViT at two widths, dense vs Butterfly vs Pixelfly.
* ``lm``  : byte-level GPT-2-style decoder on the King James Bible, dense vs BigBird vs Pixelfly.
* ``ntk`` : empirical NTK distance to dense of structured layers at equal parameter count.

Each writes ``results/<table>.json`` (a ``rows`` list), ``results/<table>.md`` and PNG plots.
matplotlib and tqdm are imported here only, never by ``import pixelfly``.
"""
