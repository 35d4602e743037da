# distillery: `make run` runs the default recipe on the embedded defaults; `make test` runs the tests.
# Both create .venv and install everything first (idempotent: a second call installs nothing).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast bench gpu-kit lock clean

install: $(STAMP)

# llama-cpp-python has no wheel on the index and is built here, once per machine and flags, into its own
# folder (pip's cache could hold a build made with other flags). Not for this CPU alone (-march=native):
# on Sapphire Rapids that enables llama.cpp's AMX kernels, which crash at the first decode (llama.cpp
# issue 20824); GGML_NATIVE=OFF builds for any x86-64 CPU with AVX2, FMA and F16C.
LLAMA_CPP := $(shell grep -i '^llama[-_]cpp[-_]python==' constraints.txt)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
LLAMA_WHEELS := $(HOME)/.cache/distillery/wheels/$(subst ==,-,$(LLAMA_CPP))$(subst =,_,$(subst $() ,,$(subst -D,-,$(LLAMA_CMAKE_ARGS))))

# constraints.txt holds every package at the version the tests pass with: a new release on the index
# changes nothing here until `make lock` records it (and the tests pass with it).
$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet -c constraints.txt torch
	ls "$(LLAMA_WHEELS)"/*.whl >/dev/null 2>&1 || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
	  $(PY) -m pip wheel --quiet --no-deps --no-cache-dir -w "$(LLAMA_WHEELS)" "$(LLAMA_CPP)"
	$(PY) -m pip install --quiet -c constraints.txt "$(LLAMA_WHEELS)"/*.whl
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,local-teacher]"
	# llama.cpp's own HF->GGUF converter, from the pinned llama-cpp-python source archive.
	$(PY) -m tasks.package.converter
	touch $(STAMP)

run: install
	$(PY) -m flows.full $(ARGS)

# Everything: unit, integration, and the whole DAG end to end for every recipe (smoke profiles).
# Two pytest workers, each running whole test files (tests/conftest.py): a DAG run keeps ~1.2 of 2 cores
# busy, so two overlap (README, Tests). TEST_WORKERS=0: in one process, one test at a time.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not e2e" $(PYTEST_ARGS)

bench: install
	$(PY) bench/cold_warm.py
	$(PY) bench/teacher_throughput.py
	$(PY) bench/train_throughput.py --rows 16 --repeats 2
	$(PY) bench/train_throughput.py --rows 60 --batch-size 8 --max-seq-len 1024 --gradient-checkpointing \
	  --repeats 2 --out bench/results/train_throughput_b8_1024.json
	$(PY) bench/serving.py
	$(PY) bench/local_threads.py
	$(PY) bench/batched_decode.py
	$(PY) bench/prefix_reuse.py

# What a lent GPU machine needs to run bench/gpu_train.py (it can fetch nothing): the wheels its image
# lacks, for its Python 3.12, SmolLM2's tokenizer and the sample conversations, in .gpu/ (git-ignored,
# carried as `.gpu`); docs/benchmarks.md, section 5, has the command to run there.
gpu-kit: install
	$(PY) bench/gpu_kit.py

# Re-resolve every dependency to the newest release pyproject.toml allows and write constraints.txt; then
# `make test`. infra/sagemaker/requirements.txt must follow the training packages (a unit test checks).
LOCK_VENV := .lock-venv
lock: install
	rm -rf $(LOCK_VENV) && python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet "$(LLAMA_WHEELS)"/*.whl
	$(LOCK_VENV)/bin/python -m pip install --quiet "$$(grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')"
	$(LOCK_VENV)/bin/python -m pip install --quiet -e ".[dev,local-teacher]"
	{ echo "# Every package make install installs, at the version the tests pass with (written by make lock)."; \
	  $(LOCK_VENV)/bin/python -m pip list --format=freeze --exclude-editable --exclude pip --exclude setuptools \
	    --exclude wheel | sed 's/+[^ ]*$$//'; } > constraints.txt
	rm -rf $(LOCK_VENV)

clean:
	rm -rf .distillery
