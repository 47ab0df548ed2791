"""The papers' numbers: every entry carries a source and a mark, and the data file agrees with
the project's REFERENCES.md (parsed here, when the shared folder is present)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from ddpm_core import paper

REFERENCES = Path(__file__).resolve().parents[1].parent / "shared" / "REFERENCES.md"


# ----------------------------------------------------------------------------- the data file

def test_every_row_has_a_source_and_a_valid_mark():
    assert len(paper.tables()) >= 10
    for name in paper.tables():
        meta = paper.info(name)
        assert meta["mark"] in paper.MARKS, name
        assert meta["source"] and meta["where"], name
        rows = paper.table(name)
        assert rows, f"{name} has no rows"
        for r in rows:
            assert r["mark"] in paper.MARKS, (name, r)
            assert r["source"].startswith(meta["paper"]["cite"]), (name, r)


def test_arxiv_ids_are_given_for_the_papers():
    assert "arXiv:2006.11239" in paper.info("ho2020_table1")["source"]
    assert "arXiv:2102.09672" in paper.info("nichol2021_cifar10")["source"]


def test_value_lookup_and_cite():
    assert paper.value("ho2020_table1", "FID", model="DDPM, L_simple") == pytest.approx(3.17)
    assert paper.setting("ho2020_settings", "T") == 1000
    assert paper.cite("ho2020_table1", model="DDPM, L_simple").endswith("[P]")
    assert paper.cite("nichol2021_nll", model="RealNVP").endswith("[U]")


def test_numbers_keep_the_printed_digits():
    assert str(paper.value("ho2020_table1", "NLL", model="DDPM, L, fixed isotropic Sigma")) == "3.70"
    assert str(paper.value("ho2020_table4", "rate_bpd", reverse_step=100)) == "0.00000"


def test_lookup_errors_name_the_choices():
    with pytest.raises(KeyError, match="known tables"):
        paper.table("no_such_table")
    with pytest.raises(LookupError, match="match"):
        paper.row("ho2020_table2", predicts="eps")
    with pytest.raises(KeyError, match="columns"):
        paper.table("ho2020_table1", colour="red")


def test_format_cell_folds_std_bound_and_train_value():
    r = paper.row("ho2020_table1", model="DDPM, L_simple")
    assert paper.format_cell(r, "IS") == "9.46 ± 0.11"
    assert paper.format_cell(r, "NLL") == "≤ 3.75 (3.72)"
    assert paper.format_cell(r, "FID") == "3.17"


def test_render_table_has_one_line_per_row_and_the_source():
    t = paper.render_table("nichol2021_cifar10")
    lines = [l for l in str(t).splitlines() if l.startswith("|")]
    assert len(lines) == 2 + len(paper.table("nichol2021_cifar10"))
    assert "arXiv:2102.09672" in t
    assert t._repr_html_().count("<tr>") == 1 + len(paper.table("nichol2021_cifar10"))


def test_captions_say_what_the_marks_in_the_table_mean():
    t = paper.render_table("nichol2021_nll")   # table mark S, two rows U
    assert "Marks: S, from agreeing transcriptions" in t.html and "U, often cited beside" in t.html
    assert "P, read in the paper" not in t.html
    assert paper.mark_legend([]) == "" and paper.mark_legend(["U", "P", "P"]).startswith("Marks: P, read in the paper; U,")
    fid = paper.ref("ho2020_table1", "FID", model="DDPM, L_simple")
    t = paper.compare([{"quantity": "FID", "paper": fid, "book": 41.2}], profile="cpu", dataset="digits",
                      extractor="classifier", n_samples=200)
    assert f"Marks: {fid.mark}, {paper.MARK_LEGEND[fid.mark]}." in t.html
    assert "Marks" not in paper.compare([{"quantity": "FID", "paper": 3.17, "book": 41.2}], profile="cpu",
                                        dataset="digits", extractor="classifier", n_samples=200).html


def test_tables_print_the_papers_symbols_not_their_ascii_keys():
    # the data file keys rows by ASCII names ("mu~", "Sigma", "eps", "L_simple"); tables show symbols
    t = paper.render_table("ho2020_table2")
    for ascii_ in ["mu~", "Sigma", "<td>eps</td>", "L_simple"]:
        assert ascii_ not in t.html, ascii_
    assert "<td>\u03bc\u0303</td>" in t.html and "<td>\u03b5</td>" in t.html  # μ̃ and ε
    assert "L, fixed isotropic \u03a3" in t.html and "<td>L<sub>simple</sub></td>" in t.html
    assert "| \u03bc\u0303 | squared error on \u03bc\u0303 |" in str(t)
    # lookups still use the keys
    assert paper.value("ho2020_table2", "FID", predicts="mu~", objective="L, fixed isotropic Sigma") == 13.22


def test_notation_leaves_run_names_and_other_words_alone():
    text = "eps-simple (eps prediction, L_simple, fixed variance beta~_t) vs mu-vlb; Sigmas, epsilon, beta_t; 3 -> 2"
    assert paper.notation(text) == ("eps-simple (\u03b5 prediction, L_simple, fixed variance \u03b2\u0303\u209c)"
                                     " vs mu-vlb; Sigmas, epsilon, \u03b2\u209c; 3 \u2192 2")
    assert paper.notation("a->b") == "a->b"  # only a spaced arrow between values
    t = paper.html_table(["run", "a < b"], [["eps-simple", "L_hybrid = L_simple + 0.001 L_vlb"]], caption="L_0 & co")
    assert "<td>eps-simple</td>" in t.html and "<th>a &lt; b</th>" in t.html
    assert "L<sub>hybrid</sub> = L<sub>simple</sub> + 0.001 L<sub>vlb</sub>" in t.html
    assert "<caption>L<sub>0</sub> &amp; co</caption>" in t.html


def test_compare_puts_paper_and_book_side_by_side():
    fid = paper.ref("ho2020_table1", "FID", model="DDPM, L_simple")
    t = paper.compare([{"quantity": "FID", "paper": fid, "book": 41.234}],
                      profile="cpu", dataset="mnist5k", extractor="offline classifier", n_samples=1000)
    body = str(t).splitlines()[2]
    cells = [c.strip() for c in body.strip("|").split("|")]
    assert cells == ["FID", "3.17 [P]", "Ho et al. 2020, Table 1, arXiv:2006.11239 (CIFAR-10)", "41.23",
                     "cpu", "mnist5k", "offline classifier", "1,000"]
    assert "<td>41.23</td>" in t._repr_html_()


def test_compare_states_a_setting_that_every_row_shares_once():
    fid = paper.ref("ho2020_table1", "FID", model="DDPM, L_simple")
    rows = [{"quantity": "FID", "paper": fid, "book": 41.2},
            {"quantity": "NLL", "paper": 3.75, "book": 1.8, "extractor": "none (likelihood)", "n_samples": 64}]
    t = paper.compare(rows, profile="cpu", dataset="mnist5k", extractor="offline classifier", n_samples=200,
                      caption="Paper against book.")
    lines = str(t).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    # profile and dataset are the same in both rows: one mention under the table, no column
    assert header == ["quantity", "paper", "paper source", "this book", "feature extractor", "samples"]
    assert lines[-1].startswith("Paper against book. All the book's numbers: profile cpu, dataset mnist5k. Marks: ")
    assert [c.strip() for c in lines[3].strip("|").split("|")][-2:] == ["none (likelihood)", "64"]
    html_text = t._repr_html_()
    assert "<th>profile</th>" not in html_text and "profile cpu, dataset mnist5k" in html_text
    # a setting that differs between rows keeps its column
    rows[1]["dataset"] = "digits"
    t = paper.compare(rows, profile="cpu", dataset="mnist5k", extractor="offline classifier", n_samples=200)
    assert "| dataset |" in str(t) and str(t).splitlines()[-1].startswith("All the book's numbers: profile cpu. Marks: ")


def test_compare_states_a_paper_source_that_every_row_shares_once():
    rows = [{"quantity": q, "paper": paper.ref("ho2020_table1", q, model="DDPM, L_simple"), "book": v}
            for q, v in [("FID", 41.2), ("IS", 4.3)]]
    t = paper.compare(rows, profile="cpu", dataset="mnist5k", extractor="offline classifier", n_samples=200)
    header = [c.strip() for c in str(t).splitlines()[0].strip("|").split("|")]
    assert header == ["quantity", "paper", "this book"]
    assert str(t).splitlines()[-1].startswith(
        "Every paper number from Ho et al. 2020, Table 1, arXiv:2006.11239 (CIFAR-10). All the book's numbers: ")
    # one row: nothing is shared, every column stays
    assert "| paper source |" in str(paper.compare(rows[:1], profile="cpu", dataset="mnist5k",
                                                   extractor="offline classifier", n_samples=200))


def test_compare_refuses_a_book_number_without_its_setting():
    with pytest.raises(ValueError, match="extractor"):
        paper.compare([{"quantity": "FID", "paper": 3.17, "book": 40.0}],
                      profile="cpu", dataset="mnist5k", n_samples=10)


# ----------------------------------------------------------------------------- against REFERENCES.md

needs_refs = pytest.mark.skipif(not REFERENCES.exists(), reason=f"{REFERENCES} not present (outside the project workspace)")


def _md_tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(caption paragraph, header, rows) for every Markdown table in the text."""
    out = []
    blocks = re.split(r"\n\s*\n", text)
    for i, block in enumerate(blocks):
        lines = [l for l in block.splitlines() if l.strip()]
        if not lines:
            continue
        tab_start = next((j for j, l in enumerate(lines) if l.startswith("|")), None)
        if tab_start is None:
            continue
        cells = [[c.strip() for c in l.strip().strip("|").split("|")] for l in lines[tab_start:]]
        caption = "\n".join(lines[:tab_start]) or (blocks[i - 1] if i else "")
        out.append((caption, cells[0], [c for c in cells[2:]]))
    return out


def _mark(text: str) -> str:
    marks = re.findall(r"\[([PCSU])[\],]", text)
    assert marks, f"no mark in {text!r}"
    return marks[-1]


def _num(cell: str):
    return float(cell) if re.fullmatch(r"-?\d+(\.\d+)?", cell) else cell


def _parse_cell(cell: str) -> dict:
    """'8.87 ± 0.12' -> {v: 8.87, std: 0.12}; '<= 3.70 (3.69)' -> {v: 3.70, bound, train: 3.69}."""
    m = re.fullmatch(r"(<=\s*)?([\d.]+)(?:\s*±\s*([\d.]+))?(?:\s*\(([\d.]+)\))?", cell)
    if not m:
        return {"v": cell or None}
    return {"v": float(m.group(2)), "bound": bool(m.group(1)),
            "std": float(m.group(3)) if m.group(3) else None,
            "train": float(m.group(4)) if m.group(4) else None}


@pytest.fixture(scope="module")
def refs() -> str:
    return REFERENCES.read_text(encoding="utf-8")


@needs_refs
def test_ho_table1_matches_references(refs):
    (caption, header, rows), = [t for t in _md_tables(refs) if t[1] == ["model", "IS", "FID", "NLL"]]
    assert len(rows) == len(paper.table("ho2020_table1"))
    for cells in rows:
        r = paper.row("ho2020_table1", model=cells[0])
        assert r["mark"] == _mark(caption)
        for col, cell in zip(header[1:], cells[1:]):
            want = _parse_cell(cell)
            assert r[col] == want["v"], (cells[0], col)
            if want.get("std") is not None:
                assert r[f"{col}_std"] == want["std"]
            if want.get("train") is not None:
                assert r[f"{col}_train"] == want["train"]
            if want.get("bound"):
                assert r[f"{col}_is_bound"] is True


@needs_refs
def test_ho_table2_matches_references(refs):
    (caption, header, rows), = [t for t in _md_tables(refs) if t[1][:2] == ["predicts", "objective"]]
    assert len(rows) == len(paper.table("ho2020_table2"))
    for cells in rows:
        r = paper.row("ho2020_table2", predicts=cells[0], objective=cells[1])
        assert r["mark"] == _mark(caption)
        for col, cell in zip(header[2:], cells[2:]):
            want = _parse_cell(cell)
            assert r[col] == want["v"]
            assert r.get(f"{col}_std") == want.get("std")


@needs_refs
def test_ho_table4_matches_references(refs):
    (caption, header, rows), = [t for t in _md_tables(refs) if t[1][0] == "T-t+1"]
    steps = [int(c) for c in header[1:]]
    by_name = {cells[0]: [float(c) for c in cells[1:]] for cells in rows}
    got = paper.table("ho2020_table4")
    assert [r["reverse_step"] for r in got] == steps
    assert [r["rate_bpd"] for r in got] == by_name["rate"]
    assert [r["rmse"] for r in got] == by_name["RMSE"]
    assert {r["mark"] for r in got} == {_mark(caption)}


@needs_refs
def test_nichol_cifar10_matches_references(refs):
    (caption, header, rows), = [t for t in _md_tables(refs) if t[1][:3] == ["T", "schedule", "objective"]]
    got = paper.table("nichol2021_cifar10")
    assert len(rows) == len(got)
    for cells, r in zip(rows, got):
        assert r["T"] == int(cells[0].replace("K", "000"))
        assert (r["schedule"], r["objective"]) == (cells[1], cells[2])
        assert (r["NLL"], r["FID"]) == (float(cells[3]), float(cells[4]))
        assert r["mark"] == _mark(caption)


@needs_refs
def test_inline_numbers_match_references(refs):
    # ImageNet 64x64 ablation: "linear 1K L_simple 3.99 / 32.5; ..."
    para = refs[refs.index("ImageNet 64x64 ablation"):]
    para = para[:para.index("\n\n")]
    found = re.findall(r"(linear|cosine) (\d)K (L_\w+) (\d+\.\d+) / (\d+\.\d+)", para)
    assert len(found) == 6
    for sched, k, obj, nll, fid in found:
        r = paper.row("nichol2021_imagenet64", iterations=200000, T=int(k) * 1000, schedule=sched, objective=obj)
        assert (r["NLL"], r["FID"], r["mark"]) == (float(nll), float(fid), _mark(para))
    for obj, nll, fid in re.findall(r"(L_\w+) (\d+\.\d+) / (\d+\.\d+)", para.split("At 1.5M:")[1]):
        r = paper.row("nichol2021_imagenet64", iterations=1500000, objective=obj)
        assert (r["NLL"], r["FID"]) == (float(nll), float(fid))
    # NLL comparison: "Improved DDPM 2.94, DDPM 3.70, ..." [S], then RealNVP / PixelCNN++ [U]
    para = refs[refs.index("NLL comparison, CIFAR-10 bits/dim:"):]
    para = para[:para.index("\n\n")]
    sure, unsure = para.split("[S]")
    for model, nll in re.findall(r"([A-Za-z][\w+ ]*?) (\d\.\d\d)", sure.split(":", 1)[1]):
        assert (paper.value("nichol2021_nll", "NLL", model=model.strip()),
                paper.row("nichol2021_nll", model=model.strip())["mark"]) == (float(nll), "S")
    for model, nll in re.findall(r"(RealNVP|PixelCNN\+\+) (\d\.\d\d)", unsure):
        assert paper.row("nichol2021_nll", model=model)["mark"] == _mark(unsure) == "U"
        assert paper.value("nichol2021_nll", "NLL", model=model) == float(nll)
    # GANs: "DCGAN FID 42.72 / IS 6.01; ..." [C]
    para = refs[refs.index("DCGAN FID"):]
    for model, fid, is_ in re.findall(r"(DCGAN|WGAN-GP \(CNN\)|SNGAN \(CNN\)) (\d+\.\d+) / (\d+\.\d+)",
                                      para.replace("FID ", "").replace("IS ", "")):
        r = paper.row("gan_cifar10", model=model)
        assert (r["FID"], r["IS"], r["mark"]) == (float(fid), float(is_), _mark(para))
    # LSUN Table 3
    m = re.search(r"Bedroom (\d+\.\d+) \(large model (\d+\.\d+)\), Church (\d+\.\d+), Cat (\d+\.\d+)", refs)
    assert [paper.value("ho2020_table3", "FID", dataset=d, model=mdl) for d, mdl in [
        ("LSUN Bedroom", "DDPM"), ("LSUN Bedroom", "DDPM (large)"), ("LSUN Church", "DDPM"), ("LSUN Cat", "DDPM")
    ]] == [float(x) for x in m.groups()]


@needs_refs
def test_settings_match_references(refs):
    para = refs[refs.index("Settings, CIFAR-10:"):]
    para = para[:para.index("\n\n")]
    s = lambda k: paper.setting("ho2020_settings", k)  # noqa: E731
    assert f"T = {s('T')}" in para
    assert f"{s('beta_1'):.0e}".replace("e-04", "e-4") in para and str(s("beta_T")) in para
    assert f"{s('parameters_millions')}M parameters" in para
    assert f"{s('parameters_rebuilt'):,}" in para
    assert f"dropout {s('dropout')}" in para and f"batch {s('batch_size')}" in para
    assert f"EMA {s('ema_decay')}" in para and f"lr {s('learning_rate'):.0e}".replace("e-04", "e-4") in para
    assert f"{s('training_steps') // 1000}k steps" in para and f"{s('training_hours')} h" in para
    proto = refs[refs.index("## Evaluation protocol"):]
    proto = proto[:proto.index("\n## ")]
    assert f"FID: {s('fid_samples') // 1000}k samples against the {s('fid_reference_images') // 1000}k CIFAR-10 training images" in proto
    code = refs[refs.index("In the released code, not the paper:"):]
    code = code[:code.index("\n\n")]
    assert f"{s('lr_warmup_steps'):,}-step" in code and f"global norm {s('grad_clip_norm')}" in code
    assert paper.row("ho2020_settings", setting="lr_warmup_steps")["mark"] == "C" == _mark(code.split("256x256")[0])
    nd = refs[refs.index("CIFAR-10 model: 128 channels"):]
    nd = nd[:nd.index("\n\n")]
    n = lambda k: paper.setting("nichol2021_settings", k)  # noqa: E731
    assert f"{n('res_blocks_per_resolution')} residual blocks" in nd and f"T = {n('T')}" in nd
    assert f"dropout {n('dropout')}" in nd and f"{n('training_steps') // 1000}K iterations" in nd
    assert paper.info("nichol2021_settings")["mark"] == _mark(nd)


def test_render_table_sorts_by_a_column_and_names_a_wrong_one():
    t = paper.render_table("nichol2021_nll", sort_by="NLL")
    values = [float(line.split("|")[2]) for line in str(t).splitlines()[2:] if line.startswith("|")]
    assert values == sorted(values) and len(values) == len(paper.table("nichol2021_nll"))
    unsorted = [r["NLL"] for r in paper.table("nichol2021_nll")]
    assert unsorted != sorted(unsorted)  # the data file's order is not already sorted
    with pytest.raises(ValueError, match="cannot sort 'nichol2021_nll' by 'FID'"):
        paper.render_table("nichol2021_nll", sort_by="FID")


def test_render_table_states_a_shared_mark_once_in_the_caption():
    shared = paper.render_table("ho2020_table2")  # every row P
    assert "<th>mark</th>" not in shared.html and "Marks (every row): P, read in the paper." in shared.html
    assert str(shared).splitlines()[0] == "| predicts | objective | IS | FID |"
    mixed = paper.render_table("nichol2021_nll")  # S and U rows
    assert "<th>mark</th>" in mixed.html and "every row" not in mixed.html


def test_frame_table_draws_a_data_frame_in_the_house_style():
    import pandas as pd

    frame = pd.DataFrame({"data": ["ring", "ring", "grid"], "model": ["GAN", "DDPM", "GAN"],
                          "FID": [1207.7, 18.4, 3.0], "seeds": [3, 3, 3]}).set_index(["data", "model"])
    t = paper.frame_table(frame, caption="Two mixtures.")
    lines = str(t).splitlines()
    assert lines[0] == "| data | model | FID | seeds |"   # one header row, the index's names first
    assert lines[2] == "| ring | GAN | 1,207.7 | 3 |"
    assert lines[3] == "|  | DDPM | 18.4 | 3 |"          # the repeated mixture left blank
    assert lines[4] == "| grid | GAN | 3.0 | 3 |" and lines[-1] == "Two mixtures."
    assert '<table class="ddpm-table">' in t.html and t.html.count("<tr>") == 4
    series = paper.frame_table(pd.Series({"data": "mnist5k", "samples": 200}, name="image study"))
    assert str(series).splitlines()[0] == "|  | image study |" and "| samples | 200 |" in str(series)
