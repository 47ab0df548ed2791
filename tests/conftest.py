"""Shared test setup.

The README's test command is plain ``pytest``; pyproject's ``[tool.pytest.ini_options]`` makes it
collect ``tests/`` and run every chapter notebook in ``book/`` with nbval
(``--nbval --nbval-current-env``). The stored notebooks hold no outputs (``test_book.py`` checks),
so nbval compares nothing and a notebook passes when every cell runs; each chapter's hidden
``remove-cell`` asserts are what can fail.

Deliberately not set here: ``DDPM_PROFILE`` and ``DDPM_CACHE``. The runtime picks the profile
(``cpu`` unless CUDA is visible) and the default cache, so models trained while nbval runs the
chapters are reused by the book build in the same session and by later runs.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # this test process only; notebook kernels keep their inline backend
