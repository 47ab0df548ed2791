"""Pictures for the book: image grids, animations, and the noise-step explorer.

Images are float tensors (or arrays) in [-1, 1] of shape ``[N, C, H, W]`` with C = 1 or 3.
Two explorers show the same precomputed frames:

* :func:`noise_step_explorer` is an ipywidgets control for a live kernel (Jupyter, Colab);
* :func:`static_noise_slider` is a self-contained HTML/JavaScript slider that still works in the
  static HTML book, where no kernel runs behind a widget. Its elements carry stable classes
  (``ddpm-noise-slider``, ``ddpm-noise-slider-range``, ``ddpm-noise-slider-frame``, ...) so a browser
  test can move it.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import io
import json
import math
import numbers
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "to_uint8", "image_grid", "show_grid", "png_bytes", "animate_frames", "noise_step_explorer",
    "static_noise_slider", "glue",
]


def _as_numpy(images) -> np.ndarray:
    """Tensor or array [N, C, H, W] (or [C, H, W]) -> float64 numpy [N, C, H, W]."""
    if hasattr(images, "detach"):
        images = images.detach().to("cpu").double().numpy()
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape [N, C, H, W] with C = 1 or 3, got {tuple(x.shape)}")
    return x


def to_uint8(images) -> np.ndarray:
    """Map [-1, 1] to 0..255 the way the papers quantise samples: ``round((x + 1) * 127.5)``,
    values outside [-1, 1] clipped. Returns uint8 [N, H, W, 3] (grey images repeated to RGB).

    Noisy images x_t (about N(0, 1)) are shown clipped; values beyond +-10 mean another scale and raise."""
    from . import runtime

    x = _as_numpy(images)
    if x.size and not np.isfinite(x).all():
        bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
        raise ValueError(f"{int(bad.sum())} of {len(x)} images hold NaN or infinite values, which have no colour: "
                         "the model that made them diverged or a computation overflowed (check the model's "
                         "loss; train.train stops with TrainingDivergedError when it sees NaN)")
    if x.size:
        runtime.check_image_range(float(x.min()), float(x.max()), 10.0)
    x = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    x = x.transpose(0, 2, 3, 1)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x


def image_grid(images, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile images [N, C, H, W] in [-1, 1] into one picture.

    :param nrow: images per row (the last row may be short and is padded).
    :param padding: pixels between images and around the border.
    :param pad_value: colour of the padding, in [-1, 1] (1 is white).
    :return: uint8 array [rows * (H + padding) + padding, nrow * (W + padding) + padding, 3].
    """
    if nrow < 1:
        raise ValueError(f"nrow must be at least 1, got {nrow}")
    tiles = to_uint8(images)
    n, h, w, _ = tiles.shape
    if n == 0:
        raise ValueError("image_grid needs at least one image; got an empty batch")
    ncol = min(nrow, n)
    nrows = -(-n // ncol)
    fill = int(np.clip(np.rint((pad_value + 1.0) * 127.5), 0, 255))
    grid = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding, 3), fill, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        grid[y:y + h, x:x + w] = tiles[i]
    return grid


def show_grid(images, title: str | None = None, ax=None, nrow: int = 8, padding: int = 2):
    """Draw :func:`image_grid` of ``images`` on ``ax`` (a new figure if None); return the Axes."""
    import matplotlib.pyplot as plt

    grid = image_grid(images, nrow=nrow, padding=padding)
    if ax is None:
        scale = 2.0 / 32  # inches per pixel at 32x32 thumbnails
        h, w = grid.shape[:2]
        _, ax = plt.subplots(figsize=(max(2.0, w * scale), max(2.0, h * scale)))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def png_bytes(picture: np.ndarray) -> bytes:
    """Encode a uint8 [H, W, 3] picture as PNG bytes (lossless; grey pictures as one channel)."""
    from PIL import Image

    picture = np.ascontiguousarray(picture)
    if picture.ndim == 3 and (picture == picture[..., :1]).all():
        picture = np.ascontiguousarray(picture[..., 0])  # grey: one channel, a third of the bytes
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


class prose_checks:
    """Context manager around a chapter's hidden checks that its text matches its measurements.

    The text was written for the measurements of one profile (``checked_in``, default ``"cpu"``:
    what the book's build and its tests run). There a failing check fails the notebook, as it
    should. In another profile (a GPU, with other model sizes and budgets) the measurements can
    rightly differ, so a failing check warns that a statement of the text does not hold in this
    run, instead of stopping the reader's notebook::

        with viz.prose_checks():
            assert fid["ddpm"] < fid["gan"], fid
    """

    def __init__(self, checked_in: str = "cpu") -> None:
        self.checked_in = checked_in

    def __enter__(self) -> "prose_checks":
        return self

    def __exit__(self, kind, error, tb) -> bool:
        from . import runtime

        if kind is None or not issubclass(kind, AssertionError) or runtime.get_profile() == self.checked_in:
            return False
        import warnings

        warnings.warn(f"a statement of this chapter's text, written for the {self.checked_in} profile's "
                      f"measurements, does not hold in this {runtime.get_profile()} run (the checks after it "
                      f"were skipped): {error}", stacklevel=2)
        return True


# the numbers glued in this process, by name (for glue_sci)
_GLUED: dict = {}

_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


def sci(x: float, digits: int = 2) -> str:
    """A number for prose: ``digits`` significant digits, plain from 0.001 up to 10,000
    ("0.0014", "12"), else with a power of ten ("4.0 × 10⁻⁵") instead of "4.0e-05"."""
    x = float(x)
    if x == 0 or not np.isfinite(x):
        return "0" if x == 0 else str(x)
    if 1e-3 <= abs(x) < 1e4:  # rounded to ``digits`` significant digits, written out in full
        rounded = float(format(x, f".{digits}g"))
        decimals = max(0, digits - 1 - math.floor(math.log10(abs(rounded))))
        return format(rounded, f",.{decimals}f")
    mantissa, exponent = format(x, f".{digits - 1}e").split("e")
    return f"{mantissa} × 10{str(int(exponent)).translate(_SUPERSCRIPT)}"


def and_list(items: Sequence[str], word: str = "and") -> str:
    """Items as an English list for prose: "a", "a and b", "a, b and c" (``word`` "or": "a or b")."""
    items = [str(i) for i in items]
    if not items:
        raise ValueError("and_list needs at least one item")
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" {word} " + items[-1]


def glue_sci(*names: str, digits: int = 2) -> None:
    """Glue ``<name>_sci``, the text :func:`sci` of each number already glued as ``name``, for prose
    that should not read "4.0e-05"."""
    for name in names:
        if name not in _GLUED:
            raise KeyError(f"{name!r} has not been glued in this kernel yet; glue it before glue_sci")
        glue(f"{name}_sci", sci(_GLUED[name], digits))


def _ipython_shell():
    """The running IPython shell, or None (no IPython, or a plain Python process)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


@contextlib.contextmanager
def _exact_floats():
    """Floats in their full ``repr`` for as long as it lasts, whatever ``%precision`` the chapter set
    for its outputs: myst-nb reads a glued number back from its plain-text form, and
    ``{glue:text}`name:,.0f``` of 12345.678 printed as "1.235e+04" would read 12,350."""
    shell = _ipython_shell()
    formatter = shell.display_formatter.formatters["text/plain"] if shell is not None else None
    if formatter is None:
        yield
        return
    saved = formatter.float_format
    formatter.float_format = "%r"
    try:
        yield
    finally:
        formatter.float_format = saved


#: Environment variable that forces (``1``) or suppresses (``0``) the reader's view of glued values.
GLUE_DISPLAY_ENV = "DDPM_GLUE_DISPLAY"

#: The first line of what a reader's kernel prints below a cell that glued text values.
READER_VIEW_HEADER = ("values this cell glued for the text (the HTML book shows them, formatted, in place of "
                      "{glue:text}`name`):")

# the text values glued by the cell that runs now, shown below it in a reader's kernel
_CELL_GLUED: list = []
_HOOKED: list = []  # the IPython shells whose post_run_cell event shows _CELL_GLUED


def reader_kernel() -> bool:
    """Whether this kernel serves a person reading a chapter (Colab, JupyterLab, Notebook 7)
    rather than a build or a test (jupyter-book, nbval).

    In a reader's kernel the prose shows ``{glue:text}`name``` roles instead of numbers, so
    :func:`glue` shows what the book would place: figures where they are glued, and the glued
    values below the cell that computed them. Detected from Colab's module, from
    ``JPY_SESSION_NAME``, which Jupyter Server sets for the kernels of the notebooks it opens, and
    from ``__vsc_ipynb_file__``, which VS Code puts in its notebooks' namespace; the environment
    variable ``DDPM_GLUE_DISPLAY`` (``1`` or ``0``) decides where it is set.
    """
    import os
    import sys
    forced = os.environ.get(GLUE_DISPLAY_ENV, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"{GLUE_DISPLAY_ENV}={forced!r}: set it to 1 (show glued values under "
                             "their cells) or 0 (do not), or unset it to detect the reader's kernel")
        return forced == "1"
    if "google.colab" in sys.modules or os.environ.get("JPY_SESSION_NAME"):
        return True
    shell = _ipython_shell()
    return shell is not None and "__vsc_ipynb_file__" in getattr(shell, "user_ns", {})


def _glued_text(value) -> str | None:
    """How the reader's view writes a glued value, or None for what it does not list (figures,
    tables, widgets: they are displayed where the book shows them)."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a 0-d tensor or array
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        v = float(value)  # 4 significant digits, but 10,000 rather than 1e+04
        return f"{v:,.0f}" if 1e4 <= abs(v) < 1e15 else format(v, ".4g")
    if type(value).__name__ == "Markdown" and hasattr(value, "_repr_markdown_"):  # {glue:md}
        value = value._repr_markdown_()
    if isinstance(value, str):
        return value if len(value) <= 300 else value[:297] + "..."
    return None


def _show_cell_glued(result=None) -> None:
    """IPython ``post_run_cell`` hook: print the text values the cell glued, one per line."""
    if _CELL_GLUED:
        print(READER_VIEW_HEADER)
        for name, text in _CELL_GLUED:
            print(f"  {name} = {text}")
    _CELL_GLUED.clear()


def _forget_cell_glued(info=None) -> None:
    """IPython ``pre_run_cell`` hook: a cell starts with no glued values to show."""
    _CELL_GLUED.clear()


def _hook_reader_view() -> bool:
    """Register :func:`_show_cell_glued` with the running IPython shell (once); False outside IPython."""
    shell = _ipython_shell()
    if shell is None:
        return False
    if not any(h is shell for h in _HOOKED):
        # values glued where no cell ends (a widget's callback) are dropped, not printed under the next cell
        shell.events.register("pre_run_cell", _forget_cell_glued)
        shell.events.register("post_run_cell", _show_cell_glued)
        _HOOKED.append(shell)
    return True


def glue(name: str, value, display: bool = False) -> None:
    """Store ``value`` under ``name`` for the book's prose and figures (myst-nb ``glue``).

    In the book, ``{glue:text}`name``` and ``{glue:figure} name`` place it. In a reader's kernel
    (:func:`reader_kernel`: Colab, JupyterLab) the markdown cannot show glued values, so figures
    are shown right away, other values when ``display`` is true, and the text values a cell glued
    are printed below it (``name = value``). Where myst-nb is not installed (Colab) nothing is
    stored for a build. A matplotlib figure is closed afterwards so the inline backend does not
    show it a second time. Returns None, so a ``glue(...)`` at the end of a cell shows nothing.
    """
    try:
        from myst_nb import glue as _myst_glue
    except ImportError:
        _myst_glue = None
    is_figure = type(value).__name__ == "Figure" and hasattr(value, "savefig")
    if isinstance(value, numbers.Number) or getattr(value, "ndim", None) == 0:  # a number, or a 0-d array
        _GLUED[name] = value
    reader = reader_kernel()
    if _myst_glue is not None:
        with _exact_floats():
            _myst_glue(name, value, display=display)
    if (display and _myst_glue is None) or (is_figure and (_myst_glue is None or reader)):
        from IPython.display import display as _show
        _show(value)
    if reader and not display and _hook_reader_view():
        text = _glued_text(value)
        if text is not None:
            _CELL_GLUED.append((name, text))
    if is_figure:
        import matplotlib.pyplot as plt
        plt.close(value)


def _grid_or_picture(frame, nrow: int) -> np.ndarray:
    a = frame.detach().cpu().numpy() if hasattr(frame, "detach") else np.asarray(frame)
    if a.ndim == 3 and a.shape[-1] == 3 and a.dtype == np.uint8:
        return a  # already a picture [H, W, 3]
    return image_grid(a, nrow=nrow)


def _check_alt(alt: str) -> None:
    if not isinstance(alt, str) or not alt.strip():
        raise ValueError(f"an animation needs a non-empty alt text (got {alt!r}): say what its frames show")


def label_animation(jshtml: str, alt: str) -> str:
    """matplotlib's ``to_jshtml`` output with a text alternative on the image that shows the frames
    and a name on the frame slider, which it lacks: what a screen reader announces for them."""
    import re
    _check_alt(alt)
    text = html.escape(alt, quote=True)
    # functions as replacements: the alt text is inserted as it is (a backslash in it is no escape)
    out, n_img = re.subn(r'<img id="(_anim_img[0-9a-f]+)"', lambda m: f'<img id="{m.group(1)}" alt="{text}"',
                         jshtml, count=1)
    out, n_slider = re.subn(r'<input id="(_anim_slider[0-9a-f]+)"',
                            lambda m: f'<input id="{m.group(1)}" aria-label="frame of the animation: {text}"',
                            out, count=1)
    if n_img != 1 or n_slider != 1:
        import warnings
        warnings.warn("matplotlib's animation HTML has no frame image or slider where expected; "
                      "the animation is shown without its alt text", stacklevel=2)
    return out


def animate_frames(frames: Sequence, interval: int = 120, nrow: int = 8, titles: Sequence[str] | None = None,
                   scale: float = 3.0, max_bytes: int = 8_000_000,
                   alt: str = "An animation of images, frame by frame"):
    """An animation of ``frames`` that plays in the static HTML book (no kernel needed).

    :param frames: a list of image batches [N, C, H, W] in [-1, 1] (each shown as a grid) or of
        uint8 pictures [H, W, 3].
    :param interval: milliseconds between frames.
    :param titles: one title per frame (e.g. ``"t = 999"``), optional.
    :param scale: screen pixels per image pixel (nearest-neighbour, so pixels stay sharp).
    :param max_bytes: stay under this size (well below matplotlib's 20 MB ``animation.embed_limit``):
        frames are evenly dropped, keeping the first and last, until the HTML fits.
    :param alt: what the frames show, for readers who cannot see them (:func:`label_animation`).
    :return: ``IPython.display.HTML`` made by ``FuncAnimation.to_jshtml()``.
    """
    import matplotlib.pyplot as plt
    from IPython.display import HTML
    from matplotlib import animation

    if len(frames) == 0:
        raise ValueError("animate_frames needs at least one frame")
    _check_alt(alt)
    if titles is not None and len(titles) != len(frames):
        raise ValueError(f"got {len(titles)} titles for {len(frames)} frames; give one per frame or none")
    pictures = [_grid_or_picture(f, nrow) for f in frames]
    keep = list(range(len(pictures)))
    while True:
        h, w = pictures[0].shape[:2]
        dpi = 100
        fig = plt.figure(figsize=(w * scale / dpi, (h * scale + (30 if titles else 0)) / dpi), dpi=dpi)
        ax = fig.add_axes([0, 0, 1, (h * scale) / (h * scale + (30 if titles else 0))])
        ax.set_axis_off()
        im = ax.imshow(pictures[keep[0]], interpolation="nearest")
        text = fig.text(0.5, 1.0, "", ha="center", va="top", fontsize=11) if titles else None

        def update(k, im=im, text=text):
            im.set_data(pictures[keep[k]])
            if text is not None:
                text.set_text(titles[keep[k]])
            return (im,)

        anim = animation.FuncAnimation(fig, update, frames=len(keep), interval=interval, blit=False)
        out = label_animation(anim.to_jshtml(default_mode="once"), alt)
        plt.close(fig)
        if len(out) <= max_bytes or len(keep) <= 2:
            return HTML(out)
        step = max(2, int(np.ceil(1.1 * len(out) / max_bytes)))  # size grows about linearly in frames
        keep = sorted(set(keep[::step]) | {keep[-1]})


def _check_frames(frames_by_schedule: Mapping[str, Sequence], steps: Sequence[int]) -> list[int]:
    steps = [int(s) for s in steps]
    if not frames_by_schedule:
        raise ValueError("frames_by_schedule is empty; give e.g. {'linear': [...], 'cosine': [...]}")
    if sorted(steps) != steps or len(set(steps)) != len(steps):
        raise ValueError(f"steps must be strictly increasing, got {steps}")
    for name, frames in frames_by_schedule.items():
        if len(frames) != len(steps):
            raise ValueError(f"schedule {name!r} has {len(frames)} frames for {len(steps)} steps; "
                             "give one image batch per step")
    return steps


def noise_step_explorer(frames_by_schedule: Mapping[str, Sequence], steps: Sequence[int], nrow: int = 8,
                        scale: int = 4):
    """A live ipywidgets explorer of precomputed forward-diffusion frames.

    :param frames_by_schedule: ``{schedule name: [x_t for t in steps]}``, each ``x_t`` a batch
        [N, C, H, W] in [-1, 1] (the same N clean images noised to step t).
    :param steps: the 0-indexed steps t of the frames, strictly increasing.
    :return: an ``ipywidgets.VBox`` with an IntSlider (step t; it snaps to the nearest precomputed
        step), a Dropdown of schedules, a Dropdown of images ("all" or one index) and an Image.
        Its children are reachable as attributes ``.slider``, ``.schedule``, ``.image``, ``.view``.
    """
    import ipywidgets as widgets

    steps = _check_frames(frames_by_schedule, steps)
    names = list(frames_by_schedule)
    arrays = {k: [_as_numpy(f) for f in v] for k, v in frames_by_schedule.items()}
    n = arrays[names[0]][0].shape[0]
    gaps = np.diff(steps)
    stride = int(np.gcd.reduce(gaps)) if len(gaps) else 1

    slider = widgets.IntSlider(value=steps[0], min=steps[0], max=steps[-1], step=stride,
                               description="step t", continuous_update=True)
    schedule = widgets.Dropdown(options=names, value=names[0], description="schedule")
    image = widgets.Dropdown(options=[("all", -1)] + [(str(i), i) for i in range(n)], value=-1,
                             description="image")
    view = widgets.Image(format="png")
    label = widgets.HTML()

    def render(*_):
        k = int(np.argmin([abs(s - slider.value) for s in steps]))
        x = arrays[schedule.value][k]
        if image.value >= 0:
            x = x[image.value:image.value + 1]
        pic = image_grid(x, nrow=nrow)
        view.value = png_bytes(pic)
        view.width = pic.shape[1] * scale
        label.value = f"showing t = {steps[k]} ({schedule.value} schedule)"

    for w in (slider, schedule, image):
        w.observe(render, names="value")
    render()
    box = widgets.VBox([widgets.HBox([slider, schedule, image]), label, view])
    box.slider, box.schedule, box.image, box.view = slider, schedule, image, view
    return box


_SLIDER_JS = """
(function () {
  var root = document.getElementById(%(id)s);
  if (!root || root.dataset.ready) { return; }
  root.dataset.ready = "1";
  var data = JSON.parse(root.querySelector(".ddpm-noise-slider-data").textContent);
  var range = root.querySelector(".ddpm-noise-slider-range");
  var select = root.querySelector(".ddpm-noise-slider-schedule");
  var img = root.querySelector(".ddpm-noise-slider-frame");
  var label = root.querySelector(".ddpm-noise-slider-label");
  function show() {
    var k = parseInt(range.value, 10), name = select.value;
    img.src = "data:image/png;base64," + data.frames[name][k];
    img.dataset.step = data.steps[k];
    img.alt = name + " schedule, step t = " + data.steps[k];
    label.textContent = "t = " + data.steps[k];
  }
  range.addEventListener("input", show);
  range.addEventListener("change", show);
  select.addEventListener("change", show);
  show();
})();
"""


def static_noise_slider(frames_by_schedule: Mapping[str, Sequence], steps: Sequence[int], nrow: int = 8,
                        scale: int = 4, caption: str | None = None):
    """A slider over precomputed frames that works in the static HTML book (plain JavaScript).

    The frames are embedded as base64 PNGs; moving the ``<input type="range">`` swaps the shown
    ``<img>``, choosing in the ``<select>`` switches schedules. Without JavaScript the first frame
    shows. Element ids derive from a hash of the frames, so re-running gives the same HTML.

    :param frames_by_schedule: ``{schedule name: [x_t for t in steps]}`` as for
        :func:`noise_step_explorer`.
    :param steps: 0-indexed steps t, strictly increasing.
    :param scale: screen pixels per image pixel.
    :return: ``IPython.display.HTML``; ``.data`` holds the HTML text. Classes:
        ``ddpm-noise-slider`` (container), ``-range``, ``-schedule``, ``-frame``, ``-label``, ``-data``.
    """
    from IPython.display import HTML

    steps = _check_frames(frames_by_schedule, steps)
    frames, width = {}, 0
    digest = hashlib.sha1()
    for name, batch in frames_by_schedule.items():
        encoded = []
        for f in batch:
            pic = image_grid(_as_numpy(f), nrow=nrow)
            width = pic.shape[1] * scale
            b = png_bytes(pic)
            digest.update(b)
            encoded.append(base64.b64encode(b).decode("ascii"))
        frames[str(name)] = encoded
    uid = "ddpm-noise-slider-" + digest.hexdigest()[:12]
    first = next(iter(frames))
    payload = json.dumps({"steps": steps, "frames": frames}).replace("</", "<\\/")
    options = "".join(f'<option value="{html.escape(n)}">{html.escape(n)}</option>' for n in frames)
    cap = f'<div class="ddpm-noise-slider-caption">{html.escape(caption)}</div>' if caption else ""
    out = f"""<div class="ddpm-noise-slider" id="{uid}" style="font-family: sans-serif; margin: 0.5em 0;">
<div style="display: flex; gap: 1em; align-items: center; flex-wrap: wrap;">
<label>schedule <select class="ddpm-noise-slider-schedule">{options}</select></label>
<label>step <input type="range" class="ddpm-noise-slider-range" min="0" max="{len(steps) - 1}" value="0" step="1"
 aria-label="diffusion step" style="width: 16em; vertical-align: middle;"></label>
<span class="ddpm-noise-slider-label">t = {steps[0]}</span>
</div>
<img class="ddpm-noise-slider-frame" data-step="{steps[0]}" alt="{html.escape(first)} schedule, step t = {steps[0]}"
 src="data:image/png;base64,{frames[first][0]}" style="width: {width}px; max-width: 100%; image-rendering: pixelated; margin-top: 0.4em;">
{cap}
<script type="application/json" class="ddpm-noise-slider-data">{payload}</script>
</div>
<script>{_SLIDER_JS % {"id": json.dumps(uid)}}</script>"""
    return HTML(out)
