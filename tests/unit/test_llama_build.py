"""The llama.cpp that `make install` builds runs on any x86-64 CPU with AVX2, and without its AMX kernels.

A -march=native build on an Intel CPU with AMX (this project's machines included) crashed the process at
the first decode of every model (llama.cpp issue 20824): the integration tests that generate died with a
segmentation fault.
"""

from __future__ import annotations

import logging

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from tasks.teacher import llama_cpp as local


def test_the_installed_build_has_no_amx_kernels():
    info = llama_cpp.llama_print_system_info()
    assert b"AVX2 = 1" in info or b"NEON = 1" in info, info
    assert local.AMX_BUILD_MARK not in info, (
        f"llama-cpp-python was built with AMX kernels ({info!r}): reinstall with CMAKE_ARGS=-DGGML_NATIVE=OFF")


def test_an_amx_build_is_named_in_a_warning_once(caplog):
    local.warn_if_amx_build.cache_clear()
    try:
        with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.WARNING, logger="distillery.teacher"):
            patch.setattr(llama_cpp, "llama_print_system_info",
                          lambda: b"CPU : AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | OPENMP = 1 | ")
            assert local.warn_if_amx_build() and local.warn_if_amx_build()
        (warning,) = caplog.records
        assert "AMX" in warning.message and "GGML_NATIVE=OFF" in warning.message
    finally:
        local.warn_if_amx_build.cache_clear()
    assert local.warn_if_amx_build() is False  # the installed build
