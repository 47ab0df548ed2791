"""Tests of the book as a whole: the stored notebooks, the table of contents, the Colab cells,
and (``-m book``) a full ``jupyter-book build -W`` opened in headless Chromium.

The build test writes HTML to ``_build/html`` and screenshots to ``_build/screenshots``. Set
``DDPM_BOOK_HTML=_build/html`` to check an existing build without rebuilding it.
"""
from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
HIDE_TAGS = {"remove-cell", "remove-input", "hide-input", "hide-cell"}
MAX_VISIBLE_CODE_LINES = 15


def toc_files() -> list[str]:
    """Every file of the toc, root first, as paths relative to the book root without suffix."""
    out = [TOC["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                out.append(e["file"])
            walk(e.get("sections"))

    for part in TOC.get("parts", []):
        walk(part.get("chapters"))
    walk(TOC.get("chapters"))
    return out


def _source(stem: str) -> Path:
    found = [ROOT / f"{stem}{ext}" for ext in (".ipynb", ".md") if (ROOT / f"{stem}{ext}").exists()]
    assert len(found) == 1, f"toc entry {stem!r}: expected one of {stem}.ipynb / {stem}.md, found {found}"
    return found[0]


def notebooks() -> list[Path]:
    return sorted(p for p in BOOK.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and "_build" not in p.parts)


def _ids(paths):
    return [p.name for p in paths]


# ----------------------------------------------------------------------------- toc and sources

def test_the_build_runs_the_chapters_as_a_build_even_from_a_readers_kernel(monkeypatch):
    """A build started inside JupyterLab inherits JPY_SESSION_NAME; the book's Sphinx extension
    turns the reader's view of glued values off for the kernels that execute the chapters."""
    import importlib.util
    from ddpm_core import viz
    ext = CONFIG["sphinx"]["local_extensions"]
    assert list(ext) == ["ddpm_build"], ext
    spec = importlib.util.spec_from_file_location("ddpm_build", ROOT / ext["ddpm_build"] / "ddpm_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/reader/book/06_training.ipynb")
    monkeypatch.delenv(viz.GLUE_DISPLAY_ENV, raising=False)
    assert viz.reader_kernel()
    monkeypatch.setenv(viz.GLUE_DISPLAY_ENV, "")  # monkeypatch restores it after the extension sets it
    assert module.setup(object())["parallel_read_safe"]
    assert os.environ[viz.GLUE_DISPLAY_ENV] == "0" and not viz.reader_kernel()


def test_toc_is_a_jupyter_book_toc_whose_files_exist():
    assert TOC["format"] == "jb-book"
    files = toc_files()
    assert len(files) == len(set(files)), f"a file is listed twice in _toc.yml: {files}"
    for stem in files:
        _source(stem)


def test_every_page_in_book_is_in_the_toc():
    listed = {str(_source(stem).relative_to(ROOT)) for stem in toc_files()}
    pages = {str(p.relative_to(ROOT)) for p in notebooks()}
    pages |= {str(p.relative_to(ROOT)) for p in BOOK.glob("*.md")}
    assert pages - listed == set(), f"add these to _toc.yml (only_build_toc_files skips them): {sorted(pages - listed)}"


def test_config_builds_the_whole_book_strictly():
    ex = CONFIG["execute"]
    assert ex["execute_notebooks"] == "force" and ex["allow_errors"] is False and ex["timeout"] >= 900
    assert CONFIG["sphinx"]["config"]["nb_execution_raise_on_error"] is True
    assert CONFIG["only_build_toc_files"] is True
    assert (ROOT / CONFIG["bibtex_bibfiles"][0]).exists()


@pytest.mark.parametrize("path", notebooks(), ids=_ids(notebooks()))
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name} cell {i} holds outputs; clear them (jupyter nbconvert --clear-output --inplace)")
    assert "widgets" not in nb.metadata, f"{path.name} stores widget state; clear it"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec must be python3"


@pytest.mark.parametrize("path", notebooks(), ids=_ids(notebooks()))
def test_first_code_cell_installs_ddpm_core_on_colab_and_is_removed_from_html(path):
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    src = first.source
    assert "google.colab" in src and "%pip install" in src, f"{path.name}: first code cell is not the Colab install cell"
    url = CONFIG["repository"]["url"].rstrip("/")
    assert f"git+{url}" in src, f"{path.name}: install cell must install from repository.url {url}"
    assert "remove-cell" in first.metadata.get("tags", []), f"{path.name}: tag the install cell 'remove-cell'"


# code that needs a package outside ddpm_core's dependencies, which Colab may lack: diffusers (the
# benchmark runs against UNet2DModel, the released weights, the converter) and torch-fidelity (Inception)
_NEEDS_APPENDICES_EXTRA = re.compile(r"diffusers|bench\.run\(|from_pretrained|get_extractor\(\"inception")


@pytest.mark.parametrize("path", notebooks(), ids=_ids(notebooks()))
def test_colab_installs_what_a_chapter_imports_beyond_ddpm_cores_dependencies(path):
    """In a fresh Colab-like environment (ddpm_core installed alone, no diffusers) both appendices
    failed: one ran the benchmark against diffusers, the other converted diffusers' U-Net."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["appendices"]
    assert {re.split(r"[<>=]", r)[0] for r in extra} == {"diffusers", "torch-fidelity"}, extra
    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    needs = any(_NEEDS_APPENDICES_EXTRA.search(src) for src in code[1:])
    asks = "ddpm_core[appendices] @ git+" in code[0]
    assert needs == asks, (f"{path.name}: its code {'needs' if needs else 'does not need'} diffusers or "
                           "torch-fidelity, so its Colab install cell should " + ("" if needs else "not ")
                           + "install ddpm_core[appendices]")


@pytest.mark.parametrize("path", notebooks(), ids=_ids(notebooks()))
def test_visible_code_cells_are_short(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and not HIDE_TAGS & set(cell.metadata.get("tags", [])):
            n = len(cell.source.strip().splitlines())
            assert n <= MAX_VISIBLE_CODE_LINES, (
                f"{path.name} cell {i} shows {n} lines; split it, move code into ddpm_core, or tag plotting 'hide-input'")


@pytest.mark.parametrize("path", notebooks(), ids=_ids(notebooks()))
def test_code_the_book_hides_is_collapsed_in_jupyter_too(path):
    """The tags hide code in the HTML only; nbformat's ``jupyter.source_hidden`` collapses the same
    cells in JupyterLab, Notebook 7 and VS Code, so a reader there meets the chapter as the book shows it
    (the glue cells and the long checks of the chapter's claims folded away, still run by "Run all")."""
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and HIDE_TAGS & set(cell.metadata.get("tags", [])):
            assert cell.metadata.get("jupyter", {}).get("source_hidden") is True, (
                f"{path.name} cell {i} ({cell.metadata['tags']}) is hidden in the book but not in Jupyter: "
                'set its metadata "jupyter": {"source_hidden": true}')


@pytest.mark.parametrize("path", notebooks(), ids=_ids(notebooks()))
def test_glued_figures_have_names_and_captions(path):
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for m in re.finditer(r"```\{glue:figure\}\s*(\S+)\n(.*?)```", text, re.S):
        key, body = m.groups()
        options = [l for l in body.splitlines() if l.startswith(":")]
        caption = [l for l in body.splitlines() if l.strip() and not l.startswith(":")]
        assert any(o.startswith(":name:") for o in options), f"{path.name}: figure {key} has no :name:"
        assert caption, f"{path.name}: figure {key} has no caption"
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert re.search(rf"glue\(\s*[\"']{re.escape(key)}[\"']", code), f"{path.name}: nothing glues {key}"


def _markdown_sources() -> list[tuple[str, str]]:
    """(label, Markdown text) of every Markdown cell of the notebooks and every Markdown page."""
    out = []
    for stem in toc_files():
        source = _source(stem)
        if source.suffix == ".ipynb":
            cells = [c for c in nbformat.read(source, as_version=4).cells if c.cell_type == "markdown"]
            out += [(f"{source.name} markdown cell {i}", c.source) for i, c in enumerate(cells)]
        else:
            out.append((source.name, source.read_text(encoding="utf-8")))
    return out


def _glued_key_patterns(notebook: Path) -> list[str]:
    """The keys a notebook glues, as regular expressions (an f-string key's fields match anything)."""
    code = "\n".join(c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code")
    keys = re.findall(r"glue\(\s*f?[\"']([^\"']+)[\"']", code)
    return [re.sub(r"\\\{[^}]*\\\}", ".+", re.escape(k)) for k in keys]


def test_glue_from_another_page_names_a_glued_key_and_a_format():
    """``{glue:text}`doc.ipynb::key:fmt``` pastes a value glued by another chapter (the conclusion's
    results). myst-nb 1.4 needs the format spec on such a reference (without one the strict build
    fails), and a renamed key would only show up in a full build: check both here."""
    refs = [(label, ref) for label, text in _markdown_sources()
            for ref in re.findall(r"\{glue:text\}`([^`]*::[^`]*)`", text)]
    assert refs, "no page pastes from another page; remove this test or the conclusion lost its results"
    patterns: dict[str, list[str]] = {}
    for label, ref in refs:
        m = re.fullmatch(r"([^:`]+\.ipynb)::([^:`]+):([^`:]+)", ref)
        assert m, f"{label}: {ref!r} needs the form doc.ipynb::key:format (myst-nb needs the format)"
        doc, key, _fmt = m.groups()
        assert (BOOK / doc).exists(), f"{label}: {doc} is not a notebook in book/"
        pats = patterns.setdefault(doc, _glued_key_patterns(BOOK / doc))
        assert any(re.fullmatch(p, key) for p in pats), f"{label}: {doc} glues no {key!r}"


def test_inline_math_pairs_up_and_holds_no_roles():
    """Parse the Markdown as the build does (MyST with the book's extensions): every ``$`` must open
    or close math, and no role ({glue}, {cite}) may end up inside math, where it shows as raw text.
    (A wrapped line that starts with ``+`` or ``-`` turns into a list item and splits the math.)"""
    from markdown_it.renderer import RendererHTML
    from myst_parser.config.main import MdParserConfig
    from myst_parser.parsers.mdit import create_md_parser

    extensions = set(CONFIG["parse"]["myst_enable_extensions"])
    md = create_md_parser(MdParserConfig(enable_extensions=extensions,
                                         dmath_double_inline=CONFIG["parse"].get("myst_dmath_double_inline", False)),
                          RendererHTML)

    def walk(tokens):
        for t in tokens:
            yield t
            yield from walk(t.children or [])

    problems = []
    for label, text in _markdown_sources():
        for t in walk(md.parse(text)):
            if t.type == "text" and "$" in t.content:
                problems.append(f"{label}: a '$' outside math near {t.content[:70]!r}")
            if t.type.startswith(("math", "amsmath")) and re.search(r"\{(glue|cite)", t.content):
                problems.append(f"{label}: a role inside math: {t.content[:70]!r}")
    assert not problems, "\n".join(problems)


def test_repository_url_is_one_setting_shared_by_readme_and_colab_links():
    url = CONFIG["repository"]["url"].rstrip("/")
    org_repo = "/".join(url.split("/")[-2:])
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md not written yet")
    text = readme.read_text(encoding="utf-8")
    if "CHAPTER_TABLE" in text:
        pytest.skip("README's chapter table is still a placeholder")
    colab = re.findall(r"colab\.research\.google\.com/github/([^/\s)]+/[^/\s)]+)/blob/([^/\s)]+)/([^\s)]+\.ipynb)", text)
    assert colab, "README has no Colab links"
    assert {c for c, _, _ in colab} == {org_repo}, f"README Colab links must use {org_repo} (repository.url)"
    assert {b for _, b, _ in colab} == {CONFIG["repository"]["branch"]}
    linked = {p for _, _, p in colab}
    missing_files = sorted(p for p in linked if not (ROOT / p).exists())
    assert not missing_files, f"README links notebooks that do not exist: {missing_files}"
    unlinked = sorted(str(p.relative_to(ROOT)) for p in notebooks() if str(p.relative_to(ROOT)) not in linked)
    assert not unlinked, f"README has no Colab link for: {unlinked}"


# ----------------------------------------------------------------------------- build + browser

def _reader_view_mark() -> str:
    """The plain words that open viz.READER_VIEW_HEADER (before any character HTML would escape)."""
    from ddpm_core import viz
    mark = viz.READER_VIEW_HEADER.split(" (")[0]
    assert len(mark) > 20 and mark == html.escape(mark), mark
    return mark


_READER_VIEW_MARK = _reader_view_mark()

def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def built_html() -> Path:
    """Build the book with ``jupyter-book build --all -W`` (or reuse ``$DDPM_BOOK_HTML``)."""
    given = os.environ.get("DDPM_BOOK_HTML")
    if given:
        html = Path(given).resolve()
        assert (html / "index.html").exists(), f"DDPM_BOOK_HTML={given} holds no index.html"
        return html
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
           "build", "--all", "-W", str(ROOT)]
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    (ROOT / "_build").mkdir(exist_ok=True)
    (ROOT / "_build" / "build.log").write_text(log, encoding="utf-8")
    assert proc.returncode == 0, f"jupyter-book build failed after {time.time() - start:.0f} s:\n{log[-6000:]}"
    return ROOT / "_build" / "html"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    found = _chromium()
    if found is None:
        pytest.skip("Chromium and chromedriver are not installed (apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--disable-sync", "--window-size=1280,1000", "--hide-scrollbars",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=opts)
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(60)  # execute_async_script waits for MathJax to typeset
    yield driver
    driver.quit()


def _open(driver, page: Path):
    driver.get(page.as_uri())
    for _ in range(100):
        if driver.execute_script("return document.readyState") == "complete":
            break
        time.sleep(0.1)
    time.sleep(0.5)  # let inline scripts and image decoding finish


def _full_screenshot(driver, path: Path, width: int = 1280, max_height: int = 12000):
    """A PNG of the whole page: the window is made as tall as the page, then restored."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(height, 800), max_height))
    time.sleep(0.5)
    driver.save_screenshot(str(path))
    driver.set_window_size(width, 1000)


def _expected_figures(source: Path) -> int:
    if source.suffix == ".ipynb":
        text = "\n".join(c.source for c in nbformat.read(source, as_version=4).cells if c.cell_type == "markdown")
    else:
        text = source.read_text(encoding="utf-8")
    return len(re.findall(r"```\{(?:glue:figure|figure)\}", text))


@pytest.mark.book
@pytest.mark.slow
def test_book_builds_and_every_page_renders(built_html, browser):
    shots = ROOT / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    repo = CONFIG["repository"]
    org_repo = "/".join(repo["url"].rstrip("/").split("/")[-2:])
    problems = []
    for stem in toc_files():
        source = _source(stem)
        page = built_html / f"{stem}.html"
        assert page.exists(), f"{page} was not built"
        _open(browser, page)
        info = browser.execute_script("""
            const art = document.querySelector('article') || document.body;
            const imgs = [...art.querySelectorAll('img')];
            const figs = [...art.querySelectorAll('figure')];
            return {
              h1: (art.querySelector('h1') || {}).textContent || '',
              imgs: imgs.map(i => [i.getAttribute('src') || '', i.complete && i.naturalWidth > 0]),
              // what a screen reader has nothing to say for: images without alt text, controls without a name
              // (docutils writes an image's file name as its alt text where the source gives none)
              noAlt: imgs.filter(i => { const a = (i.getAttribute('alt') || '').trim();
                                        return !a || /\\.(png|svg|jpe?g|gif)$/i.test(a); })
                         .map(i => (i.id || i.getAttribute('alt') || i.src || '').slice(0, 50)),
              unnamed: [...art.querySelectorAll('input, select, textarea, button')].filter(e => e.type !== 'hidden'
                  && !(e.getAttribute('aria-label') || e.getAttribute('aria-labelledby') || e.title
                       || (e.id && document.querySelector(`label[for="${e.id}"]`)) || e.closest('label')
                       || (e.tagName === 'BUTTON' && e.textContent.trim()))).map(e => e.outerHTML.slice(0, 80)),
              figs: figs.map(f => [(f.querySelector('figcaption') || {}).textContent || '',
                                   !!f.querySelector('img')]),
              tracebacks: art.querySelectorAll('.output.traceback, .output.error').length,
              stderr: [...art.querySelectorAll('.output.stderr')].map(e => e.innerText.slice(0, 120)),
              text: art.innerText.length,
              colab: [...document.querySelectorAll('a')].map(a => a.href).filter(h => h.includes('colab.research')),
              unresolved: [...art.querySelectorAll('.problematic, .xref.missing')].length,
              // TeX that reached the page as text: a dollar and a command outside math and code (a
              // glued Markdown value is not parsed for math, for one)
              rawTex: (() => { const w = document.createTreeWalker(art, NodeFilter.SHOW_TEXT), out = [];
                for (let n; (n = w.nextNode());) {
                  if (n.parentElement.closest('pre, code, .highlight, mjx-container, script, style, .output'))
                    continue;
                  if (/\\$\\\\[A-Za-z]/.test(n.textContent)) out.push(n.textContent.trim().slice(0, 60));
                } return out; })(),
              // glued values read as part of their sentence, in its weight (myst-nb's own CSS bolds them)
              boldGlue: [...art.querySelectorAll('span.pasted-text')].filter(s => s.parentElement &&
                  getComputedStyle(s).fontWeight !== getComputedStyle(s.parentElement).fontWeight)
                  .map(s => s.textContent.slice(0, 30)),
            };""")
        name = source.name
        if not info["h1"].strip():
            problems.append(f"{name}: no title")
        bad_imgs = [src[:60] for src, ok in info["imgs"] if not src or not ok]
        if bad_imgs:
            problems.append(f"{name}: images without a source or not loaded: {bad_imgs}")
        if info["noAlt"]:
            problems.append(f"{name}: images without alt text {info['noAlt'][:3]}")
        if info["unnamed"]:
            problems.append(f"{name}: controls without an accessible name {info['unnamed'][:3]}")
        no_caption = [i for i, (cap, has_img) in enumerate(info["figs"]) if not cap.strip() or not has_img]
        if no_caption:
            problems.append(f"{name}: figures {no_caption} lack an image or a caption")
        if len(info["figs"]) < _expected_figures(source):
            problems.append(f"{name}: {len(info['figs'])} figures rendered, {_expected_figures(source)} in the source")
        if info["tracebacks"]:
            problems.append(f"{name}: {info['tracebacks']} error outputs")
        if info["unresolved"]:
            problems.append(f"{name}: {info['unresolved']} unresolved references")
        if info["rawTex"]:
            problems.append(f"{name}: TeX shown as text {info['rawTex'][:3]}")
        if info["boldGlue"]:
            problems.append(f"{name}: glued values set in another weight than their sentence: {info['boldGlue'][:4]}")
        if info["stderr"]:  # warnings a reader should not have to read
            problems.append(f"{name}: stderr output {info['stderr']}")
        wide = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const check = () => [...(document.querySelector('article') || document.body)
                .querySelectorAll('mjx-container[display="true"], div.math')]
                .filter(e => e.scrollWidth - e.clientWidth > 4)
                .map(e => [e.scrollWidth - e.clientWidth, (e.textContent || '').slice(0, 40)]);
            if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
              MathJax.startup.promise.then(() => done(check()), () => done(check()));
            } else { done(check()); }""")
        if wide:  # display math wider than the text column: the reader has to scroll sideways
            problems.append(f"{name}: display equations wider than the page by [px, start]: {wide[:4]}")
        wide = browser.execute_script("""
            return [...(document.querySelector('article') || document.body)
                .querySelectorAll('.output.text_html, .output.text_html table, table.ddpm-table')]
                .filter(e => e.scrollWidth - e.clientWidth > 4)
                .map(e => [e.scrollWidth - e.clientWidth, (e.textContent || '').trim().slice(0, 40)]);""")
        if wide:  # the same for tables: a column the reader cannot see without scrolling
            problems.append(f"{name}: tables wider than the page by [px, start]: {wide[:4]}")
        # a role the build left unprocessed (inside math, MathJax then typesets its letters)
        html_text = page.read_text(encoding="utf-8")
        raw_roles = re.findall(r"\{(?:glue|cite)[a-z:]*\}(?:`|&#96;)[^`<]*", html_text)
        if raw_roles:
            problems.append(f"{name}: roles left as raw text {raw_roles[:3]}")
        if _READER_VIEW_MARK in html_text:  # the reader's-kernel view (viz.reader_kernel) leaked
            problems.append(f"{name}: the build printed glued values under cells, as for a reader's kernel")
        if source.suffix == ".ipynb":
            want = (f"{CONFIG['launch_buttons']['colab_url'].rstrip('/')}/github/{org_repo}/blob/"
                    f"{repo['branch']}/{stem}.ipynb")
            if want not in info["colab"]:
                problems.append(f"{name}: no Colab link {want} (found {info['colab']})")
        _full_screenshot(browser, shots / f"{Path(stem).name}.png")
    assert not problems, "\n".join(problems)


_CONTRAST_JS = """
const theme = arguments[0];
document.documentElement.dataset.theme = theme;  // what the theme's light/dark switch sets
document.documentElement.dataset.mode = theme;
const rgba = c => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
  const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
const over = (fg, bg) => [0, 1, 2].map(i => fg[i] * fg[3] + bg[i] * (1 - fg[3]));
const lum = c => c.map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); })
  .reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
const out = [];
const art = document.querySelector('article') || document.body;
for (const el of art.querySelectorAll(arguments[1])) {
  if (!el.offsetParent || !(el.innerText || '').trim()) continue;
  const chain = []; for (let e = el; e; e = e.parentElement) chain.unshift(e);
  let bg = [255, 255, 255], alpha = 1;
  for (const e of chain) {
    const c = rgba(getComputedStyle(e).backgroundColor); if (c && c[3] > 0) bg = over(c, bg);
    alpha *= parseFloat(getComputedStyle(e).opacity);
  }
  const fg = rgba(getComputedStyle(el).color);
  if (!fg) { out.push([0, el.tagName, 'colour ' + getComputedStyle(el).color]); continue; }
  fg[3] *= alpha;
  const [a, b] = [lum(over(fg, bg)), lum(bg)].sort((x, y) => y - x);
  const ratio = (a + 0.05) / (b + 0.05);
  if (ratio < arguments[2]) out.push([Math.round(ratio * 100) / 100, el.tagName, el.innerText.trim().slice(0, 40)]);
}
return JSON.stringify(out);
"""
# the text a reader reads: prose, captions, table cells and printed outputs
_READ_TEXT = ("article p, figcaption, table caption, table.ddpm-table td, table.ddpm-table th, table.dataframe td, "
              "table.dataframe th, .ddpm-noise-slider-caption, .ddpm-noise-slider-label, div.cell_output pre")


@pytest.mark.book
@pytest.mark.slow
def test_text_keeps_its_contrast_in_light_and_dark_mode(built_html, browser):
    """WCAG's 4.5:1 for every paragraph, caption, table cell and printed output, under both colour
    themes of the book's switch. In dark mode the theme sets HTML outputs on a light box with dark
    text: a caption in the theme's muted colour (light grey there) read at 1.7:1."""
    import json

    problems = []
    for stem in toc_files():
        _open(browser, built_html / f"{stem}.html")
        for theme in ("light", "dark"):
            low = json.loads(browser.execute_script(_CONTRAST_JS, theme, _READ_TEXT, 4.5))
            if low:
                problems.append(f"{stem} ({theme}): {len(low)} below 4.5:1, e.g. {low[:3]}")
    assert not problems, "\n".join(problems)


@pytest.mark.book
@pytest.mark.slow
def test_on_a_narrow_screen_the_page_never_scrolls_sideways_and_captions_stay_in_view(built_html, browser):
    """At a phone's width (500 px, headless Chromium's narrowest window) a wide table scrolls in its own
    box, not the page, and its caption wraps to the box: the reader does not scroll to read it."""
    import json

    problems = []
    browser.set_window_size(500, 900)
    try:
        for stem in toc_files():
            _open(browser, built_html / f"{stem}.html")
            info = json.loads(browser.execute_script("""
                const de = document.documentElement;
                const caps = [...document.querySelectorAll('article table > caption')].filter(c => c.offsetParent)
                    .map(c => { let box = c.parentElement.parentElement;
                                while (box && getComputedStyle(box).overflowX === 'visible') box = box.parentElement;
                                return [c.getBoundingClientRect().width - (box || de).clientWidth, c.textContent.trim().slice(0, 40)]; })
                    .filter(([over]) => over > 2);
                return JSON.stringify({page: de.scrollWidth - de.clientWidth, caps});"""))
            if info["page"] > 2:
                problems.append(f"{stem}: the page scrolls sideways by {info['page']} px")
            if info["caps"]:
                problems.append(f"{stem}: captions wider than their box by [px, start]: {info['caps'][:3]}")
    finally:
        browser.set_window_size(1280, 1000)
    assert not problems, "\n".join(problems)


@pytest.mark.book
@pytest.mark.slow
def test_static_noise_slider_changes_the_frame_in_the_browser(built_html, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    shots = ROOT / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    pages = [s for s in toc_files() if "ddpm-noise-slider" in (built_html / f"{s}.html").read_text(encoding="utf-8")]
    if not pages:
        pytest.skip("no page of the book holds a static noise slider yet")
    for stem in pages:
        _open(browser, built_html / f"{stem}.html")
        for k, box in enumerate(browser.find_elements(By.CSS_SELECTOR, "div.ddpm-noise-slider")):
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
            img = box.find_element(By.CSS_SELECTOR, "img.ddpm-noise-slider-frame")
            rng = box.find_element(By.CSS_SELECTOR, "input.ddpm-noise-slider-range")
            label = box.find_element(By.CSS_SELECTOR, ".ddpm-noise-slider-label")
            before = (img.get_attribute("src"), label.text, img.get_attribute("data-step"))
            box.screenshot(str(shots / f"{Path(stem).name}-slider{k}-start.png"))
            rng.click()  # focus; a click may also move the thumb
            rng.send_keys(Keys.HOME)
            start_src = img.get_attribute("src")
            for _ in range(6):
                rng.send_keys(Keys.ARROW_RIGHT)
            after = (img.get_attribute("src"), label.text, img.get_attribute("data-step"))
            assert int(rng.get_attribute("value")) == 6, f"{stem}: the range input did not move"
            assert after[0] != start_src and after[0].startswith("data:image/png;base64,"), \
                f"{stem}: moving the slider did not change the frame"
            assert after[1] != before[1] or before[2] != "0", f"{stem}: the step label did not change"
            assert int(after[2]) > 0
            box.screenshot(str(shots / f"{Path(stem).name}-slider{k}-moved.png"))
            select = box.find_elements(By.CSS_SELECTOR, "select.ddpm-noise-slider-schedule")
            if select and len(Select(select[0]).options) > 1:
                Select(select[0]).select_by_index(1)
                assert img.get_attribute("src") != after[0], f"{stem}: switching schedule did not change the frame"
                box.screenshot(str(shots / f"{Path(stem).name}-slider{k}-schedule.png"))
