"""quantize_gguf keeps llama.cpp's log out of the run's output and puts its error into the exception."""

from __future__ import annotations

import pytest

from tasks.core.models import resolve_gguf
from tasks.package.build import quantize_gguf


def test_a_file_that_is_not_a_gguf_fails_with_llama_cpps_reason_and_leaves_no_output(tmp_path, capsys):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"not a gguf" * 100)
    with pytest.raises(RuntimeError, match="failed to load model from"):
        quantize_gguf(bogus, tmp_path / "out.gguf", "q8_0")
    assert capsys.readouterr().err == ""
    assert not (tmp_path / "out.gguf").exists()


def test_a_refused_requantization_names_why_and_prints_nothing(tmp_path, capsys):
    # The packaged base is Q4_1: llama.cpp refuses to quantize it again, after two warning lines for
    # each tensor that would fall back from q4_K (none of which may reach stderr, where a flow logs it).
    with pytest.raises(RuntimeError, match="requantizing from type q4_1 is disabled"):
        quantize_gguf(resolve_gguf("smollm2-135m"), tmp_path / "out.gguf", "q4_k_m")
    captured = capsys.readouterr()
    assert "falling back" not in captured.err + captured.out
    assert not (tmp_path / "out.gguf").exists()


def test_an_unknown_kind_is_refused_before_llama_cpp_runs(tmp_path):
    with pytest.raises(ValueError, match="unknown quantization 'q3_x'"):
        quantize_gguf(tmp_path / "missing.gguf", tmp_path / "out.gguf", "q3_x")
