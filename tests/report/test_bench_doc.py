from __future__ import annotations

from pathlib import Path

from fedseg.report.bench_doc import markers, render_section, update_doc

INFO = {"command": "fedseg bench quick", "machine": {"commit": "abc1234", "date": "2026-11-30 20:00 UTC",
                                                      "platform": "Linux", "cpus": 2, "torch": "2.x"}}


def test_section_is_inserted_before_the_history_then_replaced_in_place(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    history = "## Old hand-written table\n\n| a | b |\n"
    doc.write_text("# Benchmarks\n\nIntro.\n\n" + history)
    update_doc(doc, "quick", render_section("quick", "| t1 |\n", INFO, {}, doc))
    first = doc.read_text()
    begin, end = markers("quick")
    assert first.index("Intro.") < first.index(begin) < first.index(end) < first.index("## Old")
    assert first.endswith(history) and "`fedseg bench quick`" in first and "abc1234" in first
    update_doc(doc, "quick", render_section("quick", "| t2 |\n", INFO, {}, doc))
    second = doc.read_text()
    assert "| t2 |" in second and "| t1 |" not in second and second.count(begin) == 1
    assert second.endswith(history)
    update_doc(doc, "busbra", render_section("busbra", "| b |\n", INFO, {}, doc))
    assert doc.read_text().count("fedseg-bench:") == 4 and doc.read_text().endswith(history)


def test_plots_are_copied_next_to_the_document_and_embedded(tmp_path: Path) -> None:
    plot = tmp_path / "runs" / "d_sites.png"
    plot.parent.mkdir()
    plot.write_bytes(b"png")
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir()
    text = render_section("quick", "| t |\n", INFO, {"d_sites": plot}, doc)
    assert "![d_sites](bench/quick/d_sites.png)" in text
    assert (tmp_path / "docs" / "bench" / "quick" / "d_sites.png").read_bytes() == b"png"


def test_a_second_suite_goes_after_the_first_never_inside_it(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## History\n")
    update_doc(doc, "quick", render_section("quick", "| q |\n", INFO, {}, doc))
    update_doc(doc, "scaling", render_section("scaling", "| s |\n", INFO, {}, doc))
    text = doc.read_text()
    order = [text.index(m) for m in (*markers("quick"), *markers("scaling"), "## History")]
    assert order == sorted(order)
