# make demo : set up (.venv, pinned stack, plugin build) and run the main job on the embedded synthetic dataset.
# make test : the same set-up, then the whole test suite.
# Both are idempotent: stamps skip the steps whose inputs did not change.
PYTHON_BOOT ?= python3.11
VENV        ?= .venv
PY          := $(VENV)/bin/python
DEMO_CONFIG := configs/synthetic/retinanet_R18_synthetic.yaml
DEMO_OUT    ?= output/demo
PYTEST_ARGS ?=
# The CUDA toolkit folder that holds lib64/libcudart.so (torch's guess from the nvcc wrapper is wrong here).
export CUDA_HOME ?= $(shell for d in $$CUDA_HOME /usr/local/cuda-13.0 /usr/local/cuda; do \
	[ -e "$$d/lib64/libcudart.so" ] && { readlink -f $$d; break; }; done)

# Where no GPU is visible, the CUDA kernels are built for one architecture (sm_90 + PTX: the H100/H200 this project
# is lent) to keep the build short, since nothing here runs them; with a GPU, setup.py builds for that GPU, and a
# plain `pip install .` for its default list. TORCH_CUDA_ARCH_LIST set by the caller wins.
ifeq ($(origin TORCH_CUDA_ARCH_LIST),undefined)
ifneq ($(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu),gpu)
export TORCH_CUDA_ARCH_LIST := 9.0+PTX
endif
endif

CSRC := $(wildcard retinanet_plugin/csrc/* retinanet_plugin/csrc/*/*)

.PHONY: demo test lint setup build clean-demo

setup: $(VENV)/.stack-installed
build: $(VENV)/.plugin-built

$(PY):
	$(PYTHON_BOOT) -m venv $(VENV)

$(VENV)/.stack-installed: tools/stack-requirements.txt tools/install_stack.sh | $(PY)
	bash tools/install_stack.sh $(PY)
	touch $@

$(VENV)/.plugin-built: $(VENV)/.stack-installed setup.py $(CSRC)
	$(PY) -m pip install --quiet --no-build-isolation -e .
	$(PY) -c "import retinanet_plugin.layers as l; print('focal loss op built:', l.focal_loss_op_available())"
	touch $@

$(DEMO_OUT)/model_final.pth: $(VENV)/.plugin-built $(DEMO_CONFIG)
	$(PY) train_net.py --config-file $(DEMO_CONFIG) --num-gpus 1 OUTPUT_DIR $(DEMO_OUT)

demo: $(DEMO_OUT)/model_final.pth
	$(PY) train_net.py --config-file $(DEMO_CONFIG) --eval-only OUTPUT_DIR $(DEMO_OUT)/eval \
		MODEL.WEIGHTS $(DEMO_OUT)/model_final.pth
	$(PY) tools/predict.py --config-file $(DEMO_CONFIG) --input "datasets/retinanet_synthetic_shapes/val/*" \
		--output $(DEMO_OUT)/predictions --mosaic $(DEMO_OUT)/predictions.png --max-images 9 \
		MODEL.WEIGHTS $(DEMO_OUT)/model_final.pth

test: $(VENV)/.plugin-built
	$(PY) -m pytest tests $(PYTEST_ARGS)

# The house style (pyproject.toml): `ruff format` and `ruff check` must have nothing to change.
lint: $(VENV)/.stack-installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

clean-demo:
	rm -rf $(DEMO_OUT)
