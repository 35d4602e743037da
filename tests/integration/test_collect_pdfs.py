"""arXiv PDFs from a local folder: the real sample papers, and bad files beside good ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tasks.collect.arxiv as arxiv_collector
from tasks.collect.records import Paper, PaperSection
from tasks.collect.sources import collect_source
from tasks.core.recipe import SourceConfig

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLE_PDFS = REPO / "data" / "sample" / "arxiv" / "pdf"


@pytest.fixture(scope="module")
def sample_batch():
    return collect_source(SourceConfig(kind="arxiv_pdfs", path=str(SAMPLE_PDFS), options={"workers": 2}))


def test_sample_papers_become_papers_and_sections(sample_batch):
    assert sample_batch.rejected == []
    papers = {r.id: r for r in sample_batch.records if isinstance(r, Paper)}
    sections = [r for r in sample_batch.records if isinstance(r, PaperSection)]
    metadata = json.loads((SAMPLE_PDFS / "metadata.json").read_text())
    assert set(papers) == {f"arxiv:{m['id']}" for m in metadata.values()}
    for meta in metadata.values():
        paper = papers[f"arxiv:{meta['id']}"]
        assert paper.title == meta["title"] and paper.pdf_sha256
        own = [s for s in sections if s.paper_id == meta["id"]]
        assert [s.index for s in own] == list(range(len(own)))
        assert own[0].section_title == "Title" and own[1].section_title == "Abstract"
        assert all(s.paper_title == meta["title"] and s.section_title and s.text.strip() for s in own)
        assert all(s.flags == [] for s in own)  # no hidden text in these papers
        assert not any(s.section_title.lower().startswith(("reference", "bibliograph")) for s in own)
    titles = [s.section_title for s in sections if s.paper_id == "1708.05894v1"]
    assert titles[-1] == "5. Conclusions and Clinical Significance"
    assert sample_batch.watermark == "2023-04-05T00:00:00+00:00"


def test_unchanged_pdfs_are_not_parsed_again(sample_batch, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an unchanged PDF was converted again")

    monkeypatch.setattr(arxiv_collector, "pdf_to_sections", refuse)
    known = {r.id: r.content_sha() for r in sample_batch.records}
    again = collect_source(SourceConfig(kind="arxiv_pdfs", path=str(SAMPLE_PDFS)), known=known)
    assert again.records == [] and again.skipped_unchanged == 2 and again.rejected == []


def _small_pdf(path: Path) -> None:
    import pymupdf

    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_text((72, 72), "A Small Test Paper", fontsize=20)
    page.insert_text((72, 110), "Abstract", fontsize=14)
    page.insert_text((72, 130), "We test that one bad file does not stop the others.", fontsize=11)
    page.insert_text((72, 170), "1 Introduction", fontsize=14)
    page.insert_text((72, 190), "The good file is still collected.", fontsize=11)
    doc.save(path)


def test_bad_files_are_rejected_and_the_rest_still_collected(tmp_path):
    _small_pdf(tmp_path / "good.pdf")  # small on purpose: the real papers are converted above
    data = (SAMPLE_PDFS / "1708.05894v1.pdf").read_bytes()
    (tmp_path / "truncated.pdf").write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "notapdf.pdf").write_text("Error 503: Service Unavailable")
    batch = collect_source(SourceConfig(kind="arxiv_pdfs", path=str(tmp_path), options={"workers": 2}))
    papers = [r for r in batch.records if isinstance(r, Paper)]
    assert [p.id for p in papers] == ["arxiv:good"]
    sections = [r for r in batch.records if isinstance(r, PaperSection)]
    assert [s.section_title for s in sections] == ["Title", "Abstract", "1 Introduction"]
    # Without metadata the title comes from the PDF's own first heading.
    assert sections[0].text == "A Small Test Paper"
    assert {r.item: r.reason for r in batch.rejected} == {
        "arxiv:truncated": "damaged or truncated PDF (MuPDF had to repair it)",
        "arxiv:notapdf": "not a PDF (no %PDF- header in the first 1024 bytes)",
    }
