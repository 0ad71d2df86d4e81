"""The Flower engine: every fedseg algorithm as a Flower ServerApp + ClientApp (Message API).

This package is the only part of fedseg that imports ``flwr``. Entry points:

* :func:`~fedseg.runtime.flower.simulation.run_flower_simulation` -- ``fedseg run --engine flower-sim``;
* ``fedseg.runtime.flower.server_app:app`` and ``fedseg.runtime.flower.client_app:app`` -- the
  components a deployment names in its Flower app (``fedseg flower app`` writes it);
* :func:`~fedseg.runtime.flower.worker.serve_clientapps` -- ``fedseg flower clientapp``, the
  long-lived ClientApp process of a SuperNode started with ``--isolation process``;
* :mod:`~fedseg.runtime.flower.certs` and :mod:`~fedseg.runtime.flower.project` -- certificates,
  SuperNode keys, the app directory and the ``flwr`` connection settings.

See docs/deployment.md.
"""

from __future__ import annotations

__all__: list[str] = []
