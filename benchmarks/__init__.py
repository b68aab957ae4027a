"""solo_d2's benchmarks, importable (``tools/benchmark.py`` is their command line).

- :mod:`.runner`: the CPU sections, the section table and ``main`` (``python -m benchmarks.runner``
  is the same as ``python tools/benchmark.py``);
- :mod:`.baselines`: the public implementations' algorithms re-implemented, and the inputs;
- :mod:`.cuda`: the CUDA sections;
- :mod:`.report`: the markdown report and the merge of partial runs.

A top-level folder of the checkout, not part of the installed package (``setup.py`` excludes
it: ``pip install .`` installs no benchmark code), and not in ``tools/``: Detectron2 (main)
installs a top-level package named ``tools``, which a ``from tools import ...`` of this
repository would find instead. Scripts put the checkout first on ``sys.path``; tests import it
from the repository root. Nothing is imported here, so ``import benchmarks`` stays light.
"""
