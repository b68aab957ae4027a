"""solo_d2's benchmarks, importable (``tools/benchmark.py`` is their command line).

- :mod:`.runner`: the CPU sections, the section table and ``main`` (``python -m solo_d2.benchmark.runner``
  is the same as ``python tools/benchmark.py``);
- :mod:`.baselines`: the public implementations' algorithms re-implemented, and the inputs;
- :mod:`.cuda`: the CUDA sections;
- :mod:`.report`: the markdown report and the merge of partial runs.

They live in solo_d2, not in ``tools/``: Detectron2 (main) installs a top-level package named
``tools``, which a ``from tools import ...`` of this repository would find instead.
Nothing is imported here, so ``import solo_d2.benchmark`` stays light.
"""
