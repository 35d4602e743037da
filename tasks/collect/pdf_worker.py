"""Child process that turns one untrusted PDF into Markdown, under resource limits.

Run by :func:`tasks.collect.arxiv.pdf_to_sections` as
``python -I pdf_worker.py <pdf> <out.json> <memory_mb> <cpu_seconds>``. It limits its own address
space and CPU time before importing the PDF libraries, so a hostile or broken PDF can exhaust only
this process. It writes one JSON object to ``out.json``:
``{"ok": true, "markdown": ..., "pages": n, "hidden": [{"page", "reason", "text"}]}`` or
``{"ok": false, "reason": ...}``. It imports nothing from this repository (``-I`` keeps the script's
folder, whose ``arxiv.py`` would shadow the library, off ``sys.path``).
"""

from __future__ import annotations

import json
import resource
import sys

# A span smaller than this (points) cannot be read by a person: a classic prompt-injection hiding place.
TINY_FONT_PT = 1.5
# How far outside the page a span may start before it counts as placed off the page (points).
OFF_PAGE_MARGIN_PT = 2.0


def _limit(memory_mb: int, cpu_seconds: int) -> None:
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _is_white(colorspace: int, color: tuple[float, ...]) -> bool:
    if not color:
        return False
    if colorspace == 4 or len(color) == 4:  # CMYK: no ink at all is white
        return all(c <= 0.02 for c in color)
    return all(c >= 0.98 for c in color)


def find_hidden_text(doc) -> list[dict]:
    """Spans a reader cannot see: invisible render mode, zero opacity, white, tiny, or off the page."""
    found: list[dict] = []
    for page in doc:
        rect = page.rect
        for span in page.get_texttrace():
            text = "".join(chr(c[0]) for c in span.get("chars", ()) if c[0] > 0).strip()
            if not text:
                continue
            x0, y0, x1, y1 = span["bbox"]
            reason = None
            if span.get("type") == 3 or span.get("opacity", 1.0) <= 0.01:
                reason = "invisible"
            elif span.get("size", 10.0) < TINY_FONT_PT:
                reason = "tiny"
            elif (
                x1 < rect.x0 - OFF_PAGE_MARGIN_PT
                or x0 > rect.x1 + OFF_PAGE_MARGIN_PT
                or y1 < rect.y0 - OFF_PAGE_MARGIN_PT
                or y0 > rect.y1 + OFF_PAGE_MARGIN_PT
            ):
                reason = "off_page"
            elif _is_white(span.get("colorspace", 3), tuple(span.get("color") or ())):
                reason = "white"
            if reason:
                if found and found[-1]["page"] == page.number and found[-1]["reason"] == reason:
                    found[-1]["text"] += " " + text  # one run of hidden text, not one entry per span
                else:
                    found.append({"page": page.number, "reason": reason, "text": text})
    return found


def convert(pdf_path: str) -> dict:
    """Open, check and convert one PDF; every expected failure is a reason, not an exception."""
    with open(pdf_path, "rb") as handle:
        head = handle.read(1024)
    if b"%PDF-" not in head:
        return {"ok": False, "reason": "not a PDF (no %PDF- header in the first 1024 bytes)"}

    import pymupdf

    try:
        doc = pymupdf.open(pdf_path, filetype="pdf")
    except Exception as exc:  # noqa: BLE001 - MuPDF raises several types for unreadable files
        return {"ok": False, "reason": f"unreadable PDF: {type(exc).__name__}: {exc}"}
    if doc.needs_pass:
        return {"ok": False, "reason": "encrypted PDF (needs a password)"}
    if doc.is_repaired:
        # MuPDF rebuilt a broken cross-reference table: usually a truncated download. What it
        # recovers is partial, and a partial paper is worse than none for training data.
        return {"ok": False, "reason": "damaged or truncated PDF (MuPDF had to repair it)"}
    if doc.page_count == 0:
        return {"ok": False, "reason": "PDF has no pages"}
    hidden = find_hidden_text(doc)
    import pymupdf4llm  # imported late: it loads a layout model, which a rejected file should not pay for

    markdown = pymupdf4llm.to_markdown(doc, show_progress=False)
    if not markdown.strip():
        return {"ok": False, "reason": "no extractable text (a scanned PDF without a text layer?)"}
    return {"ok": True, "markdown": markdown, "pages": doc.page_count, "hidden": hidden}


def _out_of_memory(exc: BaseException) -> bool:
    # Under RLIMIT_AS the failure surfaces from C code as an allocation or mmap error, not MemoryError.
    text = str(exc).lower()
    return any(
        marker in text
        for marker in (
            "failed to map segment",
            "cannot allocate memory",
            "bad_alloc",
            "out of memory",
            "malloc",
        )
    )


def main(argv: list[str]) -> int:
    pdf_path, out_path, memory_mb, cpu_seconds = argv[1], argv[2], int(argv[3]), int(argv[4])
    _limit(memory_mb, cpu_seconds)
    try:
        result = convert(pdf_path)
    except MemoryError:
        result = {"ok": False, "reason": f"memory limit of {memory_mb} MB exceeded"}
    except Exception as exc:  # noqa: BLE001 - any failure is this PDF's rejection reason
        if _out_of_memory(exc):
            result = {
                "ok": False,
                "reason": f"memory limit of {memory_mb} MB exceeded ({type(exc).__name__})",
            }
        else:
            result = {"ok": False, "reason": f"conversion failed: {type(exc).__name__}: {exc}"}
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)  # ASCII escapes: a lone surrogate from a broken font cannot fail the write
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
