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

# OpenMP's wait policy is left to the environment. Passive waiting (OMP_WAIT_POLICY=PASSIVE, which
# this file and .ci/run set until 2026-12-07) protects a process whose second core another process
# holds, but on an otherwise idle machine it makes every two-thread step pay a thread wake-up per
# operation: measured on the project's 2-core machine, a cpu-mnist training update took 205-360 ms
# with it against 143-180 ms without (one thread: 195 ms), a toy-swissroll update 21-25 against 13 ms,
# and nbval of every chapter with trained models cached took 538 against 459 s. The tests and the
# chapters run one computing process at a time (the book's side-by-side trainings use one thread per
# worker), so the default policy suits them; set PASSIVE yourself when the machine is busy.
import matplotlib
import pytest

matplotlib.use("Agg")  # this test process only; notebook kernels keep their inline backend


@pytest.fixture(scope="module")
def ddpm_cache(tmp_path_factory):
    """A private DDPM_CACHE for a whole test module, so tests never read or fill the book's model
    cache (modules that need one per test define their own ``cache``). Not named ``cache``, which
    would hide pytest's own fixture of that name."""
    path = tmp_path_factory.mktemp("ddpm_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DDPM_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny models run faster and steadier on a shared 2-core machine without OpenMP barriers."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def compile_fails(monkeypatch):
    """``torch.compile`` as on a platform where inductor cannot build (no C++ compiler): compiling
    succeeds, the first call fails. Yields the list of those calls."""
    import torch

    calls = []

    def broken_compile(net, *args, **kwargs):
        def fn(*a, **k):
            calls.append(1)
            raise RuntimeError("InductorError: no working C++ compiler found")
        return fn
    monkeypatch.setattr(torch, "compile", broken_compile)
    yield calls


# nbval waits at most 5 s for each output message of a cell once the cell has finished; a kernel
# that has just trained a model on both cores can take longer to flush its progress bar's messages
# (seen once: chapter 6's training cell failed with "Timeout of 5 seconds exceeded waiting for
# output" although it had run). Cells still time out after --nbval-cell-timeout (pyproject).
NBVAL_OUTPUT_TIMEOUT = 120


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        if hasattr(item, "output_timeout"):  # nbval's notebook cells
            item.output_timeout = NBVAL_OUTPUT_TIMEOUT


@pytest.fixture(autouse=True)
def _sigint_handler_is_left_as_found(request):
    """A test that leaves another Ctrl-C handler installed (the trainer's deferred interrupt, a
    pool's) changes how every later test sees SIGINT: put the handler back and warn, naming the test.
    Found with it (2026-12-07): a pytest started in the background by a non-interactive shell begins
    with SIGINT ignored (so an interrupt test must install Python's handler itself), and nbclient's
    event loop, in the reader's-kernel tests of test_viz, leaves Python's handler in its place."""
    import signal
    import threading
    import warnings

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        warnings.warn(f"{request.node.nodeid} left the SIGINT handler {after!r} (was {before!r}); put back")
