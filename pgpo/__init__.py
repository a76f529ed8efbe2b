"""pgpo: Perception-Grounded Policy Optimization (PGPO, arXiv 2604.01840) for vision-language models, on TRL.

The public face::

    from pgpo import PGPOConfig, PGPOTrainer

(imported lazily, so ``pgpo --help`` and ``import pgpo`` stay instant). The method's pure functions live in
:mod:`pgpo.dependency` (Eq. 1, the k3 estimator), :mod:`pgpo.text_only` (the blind pass), :mod:`pgpo.shaping`
(Eqs. 4-8 and VPPO, a registry) and :mod:`pgpo.loss_terms` (PAPO's and VPPO's extra loss terms, a registry).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["PGPOConfig", "PGPOTrainer", "__version__"]

_LAZY = {"PGPOConfig": "pgpo.config", "PGPOTrainer": "pgpo.trainer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pgpo' has no attribute {name!r}")
