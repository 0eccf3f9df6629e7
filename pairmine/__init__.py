"""pairmine: mine (source, mask, target) training pairs for object-removal models on Ray Data.

The import package is assembled from the repository's top-level folders (see pyproject.toml):
``pairmine.operators`` (per-record work, pure functions) and ``pairmine.pipelines`` (Ray Data graphs,
readers, the writer and the CLI). Importing it arms the torchvision CPU shim (``tv_cpu_shim``).
"""

from . import tv_cpu_shim

tv_cpu_shim.install_lazy()

__version__ = "0.1.0"
