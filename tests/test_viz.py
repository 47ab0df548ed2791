"""Image grids, animations and the two noise-step explorers of ddpm_core.viz."""
from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import torch

from ddpm_core import viz


def _batch(n=5, c=3, h=6, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g) * 2 - 1


def test_and_list_writes_an_english_list():
    assert viz.and_list(["(a)"]) == "(a)"
    assert viz.and_list(["a", "b"]) == "a and b"
    assert viz.and_list(["a", "b", "c"], "or") == "a, b or c"
    with pytest.raises(ValueError, match="at least one"):
        viz.and_list([])


def test_to_uint8_maps_the_range_and_clips():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 5)
    out = viz.to_uint8(x)
    assert out.shape == (1, 1, 5, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]  # round(127.5) = 128 (round half to even)
    assert (out[..., 0] == out[..., 2]).all()  # grey repeated to RGB


def test_image_grid_shape_and_placement():
    x = _batch(n=5, h=6, w=4)
    g = viz.image_grid(x, nrow=3, padding=2, pad_value=-1.0)
    assert g.shape == (2 * (6 + 2) + 2, 3 * (4 + 2) + 2, 3) and g.dtype == np.uint8
    tiles = viz.to_uint8(x)
    assert np.array_equal(g[2:8, 2:6], tiles[0])
    assert np.array_equal(g[10:16, 8:12], tiles[4])  # second row, second column
    assert (g[10:16, 14:18] == 0).all()  # the empty sixth cell has the pad colour (black)
    assert (g[0] == 0).all()


def test_image_grid_accepts_numpy_and_fewer_images_than_nrow():
    g = viz.image_grid(np.zeros((2, 1, 3, 3)), nrow=8, padding=0)
    assert g.shape == (3, 6, 3)
    assert (g == 128).all()


def test_image_grid_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        viz.image_grid(torch.zeros(2, 4, 3, 3))


def test_image_grid_refuses_nan_images_and_says_why_they_arise():
    x = torch.zeros(3, 1, 4, 4)
    x[1, 0, 2, 2] = float("nan")
    x[2, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"2 of 3 images hold NaN or infinite values.*diverged"):
        viz.image_grid(x)


def test_show_grid_draws_the_grid():
    ax = viz.show_grid(_batch(), title="six")
    assert ax.get_title() == "six"
    shown = ax.get_images()[0].get_array()
    assert np.array_equal(np.asarray(shown), viz.image_grid(_batch()))
    import matplotlib.pyplot as plt
    plt.close(ax.figure)


def test_animate_frames_embeds_every_frame_under_the_limit():
    frames = [_batch(seed=s) for s in range(4)]
    out = viz.animate_frames(frames, titles=[f"t = {s}" for s in range(4)])
    assert "<script" in out.data
    assert out.data.count("data:image/png;base64") == 4


def test_animate_frames_drops_frames_to_fit():
    frames = [_batch(n=16, h=16, w=16, seed=s) for s in range(12)]
    full = viz.animate_frames(frames)
    small = viz.animate_frames(frames, max_bytes=len(full.data) // 3)
    n = small.data.count("data:image/png;base64")
    assert 2 <= n < 12 and len(small.data) <= len(full.data) // 3


def _frames_by_schedule(steps):
    return {"linear": [_batch(seed=s) for s in steps], "cosine": [_batch(seed=100 + s) for s in steps]}


def test_static_noise_slider_holds_every_frame_and_a_range_input():
    steps = [0, 100, 500, 999]
    out = viz.static_noise_slider(_frames_by_schedule(steps), steps, caption="noise")
    text = out.data
    assert 'class="ddpm-noise-slider"' in text
    assert re.search(r'<input type="range" class="ddpm-noise-slider-range" min="0" max="3"', text)
    data = re.search(r'<script type="application/json" class="ddpm-noise-slider-data">(.*?)</script>', text, re.S)
    import json
    payload = json.loads(data.group(1))
    assert payload["steps"] == steps
    assert {k: len(v) for k, v in payload["frames"].items()} == {"linear": 4, "cosine": 4}
    # each frame is a PNG of the grid of that step
    from PIL import Image
    pic = np.asarray(Image.open(io.BytesIO(base64.b64decode(payload["frames"]["cosine"][2]))).convert("RGB"))
    assert np.array_equal(pic, viz.image_grid(_frames_by_schedule(steps)["cosine"][2]))
    assert '<option value="cosine">' in text


def test_static_noise_slider_is_deterministic_and_ids_differ_per_content():
    steps = [0, 10]
    a = viz.static_noise_slider(_frames_by_schedule(steps), steps).data
    b = viz.static_noise_slider(_frames_by_schedule(steps), steps).data
    c = viz.static_noise_slider({"linear": [_batch(seed=7), _batch(seed=8)]}, steps).data
    ids = [re.search(r'id="(ddpm-noise-slider-[0-9a-f]+)"', t).group(1) for t in (a, b, c)]
    assert a == b and ids[0] == ids[1] != ids[2]


def test_explorers_reject_mismatched_frames():
    with pytest.raises(ValueError, match="frames for 3 steps"):
        viz.static_noise_slider({"linear": [_batch()] * 2}, [0, 1, 2])
    with pytest.raises(ValueError, match="strictly increasing"):
        viz.noise_step_explorer({"linear": [_batch()] * 2}, [5, 1])


def test_noise_step_explorer_builds_and_updates():
    pytest.importorskip("ipywidgets")
    steps = [0, 250, 500, 750]
    box = viz.noise_step_explorer(_frames_by_schedule(steps), steps)
    assert (box.slider.min, box.slider.max, box.slider.step) == (0, 750, 250)
    first = box.view.value
    box.slider.value = 500
    assert box.view.value != first
    from PIL import Image
    shown = np.asarray(Image.open(io.BytesIO(box.view.value)).convert("RGB"))
    assert np.array_equal(shown, viz.image_grid(_frames_by_schedule(steps)["linear"][2]))
    box.schedule.value = "cosine"
    box.image.value = 1
    shown = np.asarray(Image.open(io.BytesIO(box.view.value)).convert("RGB"))
    assert np.array_equal(shown, viz.image_grid(_frames_by_schedule(steps)["cosine"][2][1:2]))


def test_glue_closes_figures_and_returns_nothing_to_display():
    import matplotlib.pyplot as plt
    fig = plt.figure()
    assert viz.glue("test_fig", fig) is None
    assert not plt.fignum_exists(fig.number)
    assert viz.glue("test_value", 3.5) is None


def test_png_bytes_stores_grey_as_one_channel():
    from PIL import Image
    grey = viz.image_grid(torch.zeros(2, 1, 4, 4))
    colour = viz.image_grid(_batch(n=2, h=4, w=4))
    assert Image.open(io.BytesIO(viz.png_bytes(grey))).mode == "L"
    assert Image.open(io.BytesIO(viz.png_bytes(colour))).mode == "RGB"


def test_prose_checks_fail_in_the_profile_the_text_was_written_for_and_warn_elsewhere(monkeypatch):
    from ddpm_core import runtime

    monkeypatch.setattr(runtime, "get_profile", lambda: "cpu")
    with pytest.raises(AssertionError, match="fid"):
        with viz.prose_checks():
            assert 2 < 1, "fid"
    with viz.prose_checks():  # checks that hold pass silently
        assert 1 < 2
    monkeypatch.setattr(runtime, "get_profile", lambda: "gpu")
    after = []
    with pytest.warns(UserWarning, match=r"does not hold in this gpu run.*ddpm 14 > gan 12"):
        with viz.prose_checks():
            assert 14 < 12, "ddpm 14 > gan 12"
            after.append(1)
    assert after == []  # the checks after a failing one are skipped
    with pytest.raises(KeyError):  # a broken check cell is not a statement of the text: it still fails
        with viz.prose_checks():
            {}["missing"]


def test_sci_writes_small_and_large_numbers_with_a_power_of_ten():
    assert viz.sci(4.0e-5) == "4.0 × 10⁻⁵" and viz.sci(9.87e-12) == "9.9 × 10⁻¹²"
    assert viz.sci(-2.5e-7) == "-2.5 × 10⁻⁷" and viz.sci(12345.0) == "1.2 × 10⁴"
    assert viz.sci(1.4e-3) == "0.0014" and viz.sci(0.0743) == "0.074" and viz.sci(0) == "0"
    # from 1 up to 10,000 written out, rounded to the significant digits (not "1.6e+03")
    assert viz.sci(12.3) == "12" and viz.sci(1615.2) == "1,600" and viz.sci(1615.2, 3) == "1,620"
    assert viz.sci(9.96) == "10" and viz.sci(0.9996, 3) == "1.00"


def test_glue_sci_glues_the_text_of_a_glued_number(monkeypatch):
    viz.glue("tiny_number_for_test", 3.7e-6)
    viz.glue("a_tensor_for_test", torch.tensor(2.5e-7))
    viz.glue("a_text_for_test", "words")  # only numbers are kept for glue_sci
    glued = {}
    monkeypatch.setattr(viz, "glue", lambda name, value, display=False: glued.__setitem__(name, value))
    viz.glue_sci("tiny_number_for_test", "a_tensor_for_test")
    assert glued == {"tiny_number_for_test_sci": "3.7 × 10⁻⁶", "a_tensor_for_test_sci": "2.5 × 10⁻⁷"}
    for name in ("never_glued_name", "a_text_for_test"):
        with pytest.raises(KeyError, match="not been glued"):
            viz.glue_sci(name)


def test_glue_keeps_every_digit_of_a_number_when_outputs_print_fewer():
    # the chapters set %precision %.4g for their outputs; myst-nb reads a glued number back from its
    # plain text, so glue must publish the full repr (else {glue:text}`n:,.0f` of 12345.678 reads 12,350)
    pytest.importorskip("myst_nb")
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    shell = InteractiveShell.instance()
    shell.run_line_magic("precision", "%.4g")
    try:
        def shown(value):
            return shell.display_formatter.format(value)[0]["text/plain"]
        assert shown(12345.678) == "1.235e+04"  # the chapters' outputs
        with capture_output() as glued:
            viz.glue("digits_for_test", 12345.678)
        assert glued.outputs[0].data["application/papermill.record/text/plain"] == "12345.678"
        assert shown(0.123456) == "0.1235"  # the setting is back after glue
    finally:
        shell.run_line_magic("precision", "")


_READER_CELL = """\
import matplotlib.pyplot as plt
from ddpm_core.viz import glue
fig = plt.figure(); plt.plot([0, 1])
glue("fig_x", fig)
glue("n_x", 50000); glue("f_x", 0.123456); glue("s_x", "some words")
glue("shown_x", 2.5, display=True)
from IPython.display import Markdown
glue("md_x", Markdown("`run.py`"))
"""


@pytest.mark.slow
@pytest.mark.parametrize("reader", [True, False], ids=["reader's kernel", "build"])
def test_a_readers_kernel_shows_glued_figures_and_values_the_build_keeps_them_for_the_prose(reader, monkeypatch):
    """In Colab or JupyterLab the markdown shows ``{glue:text}`n_x``` instead of the number, so the
    cell that glues prints the values below itself and shows its figures; a build (jupyter-book,
    nbval) gets no such output. Run in a real kernel, where IPython's post_run_cell event fires."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv(viz.GLUE_DISPLAY_ENV, "1" if reader else "0")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(_READER_CELL),
                                         nbformat.v4.new_code_cell("1 + 1")])
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    first, second = (c.outputs for c in nb.cells)
    printed = "".join(o.get("text", "") for o in first if o.output_type == "stream" and o.name == "stdout")
    images = [o for o in first if o.output_type == "display_data" and "image/png" in o.data]
    assert not [o for o in first if o.output_type == "error"], first
    if reader:
        assert printed.startswith(viz.READER_VIEW_HEADER), printed
        lines = printed.splitlines()[1:]
        assert lines == ["  n_x = 50,000", "  f_x = 0.1235", "  s_x = some words", "  md_x = `run.py`"], lines
        assert len(images) == 1  # the figure, once (the inline backend does not show it again)
    else:  # the figure goes to myst-nb for the build; without myst-nb (Colab) it is shown anyway
        import importlib.util
        assert printed == "" and len(images) == (0 if importlib.util.find_spec("myst_nb") else 1)
    assert [o.output_type for o in second] == ["execute_result"]  # the values are not shown twice


def test_the_readers_view_writes_numbers_as_a_reader_reads_them():
    text = viz._glued_text
    assert text(2000) == "2,000" and text(np.int64(50000)) == "50,000" and text(True) == "True"
    assert text(10000.0) == "10,000" and text(-53785.89) == "-53,786"  # not 1e+04
    assert text(0.029184) == "0.02918" and text(4.036e-05) == "4.036e-05" and text(1212.34) == "1212"
    assert text(np.float32(0.5)) == "0.5" and text(torch.tensor(3.25)) == "3.25" and text(2e15) == "2e+15"
    assert text("x" * 400).endswith("...") and len(text("x" * 400)) == 300
    import matplotlib.pyplot as plt
    fig = plt.figure()
    assert text(fig) is None  # figures are shown, not listed
    plt.close(fig)


def test_reader_kernel_is_detected_from_jupyter_server_or_colab_and_can_be_forced(monkeypatch):
    import sys
    monkeypatch.delenv(viz.GLUE_DISPLAY_ENV, raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert not viz.reader_kernel()  # a build or a test
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/reader/02_forward_diffusion.ipynb")
    assert viz.reader_kernel()
    monkeypatch.setenv(viz.GLUE_DISPLAY_ENV, "0")
    assert not viz.reader_kernel()
    monkeypatch.delenv("JPY_SESSION_NAME")
    monkeypatch.setitem(sys.modules, "google.colab", object())
    monkeypatch.setenv(viz.GLUE_DISPLAY_ENV, "")
    assert viz.reader_kernel()
    monkeypatch.delenv(viz.GLUE_DISPLAY_ENV)
    monkeypatch.delitem(sys.modules, "google.colab")
    from IPython.core.interactiveshell import InteractiveShell
    shell = InteractiveShell.instance()
    assert not viz.reader_kernel()
    monkeypatch.setitem(shell.user_ns, "__vsc_ipynb_file__", "/home/reader/book/03_markov_chain.ipynb")
    assert viz.reader_kernel()  # VS Code's notebooks
    monkeypatch.setenv(viz.GLUE_DISPLAY_ENV, "yes")
    with pytest.raises(ValueError, match="DDPM_GLUE_DISPLAY='yes'.*1 .*or 0"):
        viz.reader_kernel()


def test_animations_name_their_frame_image_and_slider_for_screen_readers():
    """matplotlib's jshtml has neither an alt text on the frame image nor a name on the slider."""
    from ddpm_core import toy
    alt = r'Digits "0" & noise \sigma_t \1'  # quotes, an ampersand, and backslashes that are no regex escapes
    made = {"animate_frames": viz.animate_frames([torch.zeros(2, 1, 8, 8)] * 2, alt=alt),
            "animate_points": toy.animate_points([torch.zeros(5, 2)] * 2, alt=alt)}
    for name, anim in made.items():
        img = re.findall(r"<img id=\"_anim_img[^>]*>", anim.data)
        slider = re.findall(r"<input id=\"_anim_slider[^>]*>", anim.data)
        assert len(img) == 1 and r'alt="Digits &quot;0&quot; &amp; noise \sigma_t \1"' in img[0], (name, img)
        assert len(slider) == 1 and 'aria-label="frame of the animation: Digits &quot;0&quot;' in slider[0], (name, slider)
    assert 'alt="An animation of images' in viz.animate_frames([torch.zeros(2, 1, 8, 8)] * 2).data  # a default
    with pytest.raises(ValueError, match="non-empty alt text"):
        viz.animate_frames([torch.zeros(2, 1, 8, 8)] * 2, alt=" ")
    with pytest.raises(ValueError, match="non-empty alt text"):
        toy.animate_points([torch.zeros(5, 2)] * 2, alt="")
    with pytest.warns(UserWarning, match="without its alt text"):
        assert viz.label_animation("<div>no animation</div>", "x") == "<div>no animation</div>"


def test_a_value_glued_outside_a_cell_is_not_printed_under_the_next_one(monkeypatch):
    """A widget's callback or a silent execution glues without a cell that ends: its values are
    dropped when the next cell starts, not shown as if that cell had glued them."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    monkeypatch.setenv(viz.GLUE_DISPLAY_ENV, "1")
    shell = InteractiveShell.instance()
    shell.user_ns["glue"] = viz.glue
    shell.run_cell("glue('from_a_callback', 5)", silent=True)  # no pre/post_run_cell events
    with capture_output() as out:
        shell.run_cell("glue('this_cells_value', 6)")
    assert "this_cells_value = 6" in out.stdout and "from_a_callback" not in out.stdout, out.stdout
    with capture_output() as out:
        shell.run_cell("x = 1")
    assert out.stdout == ""
