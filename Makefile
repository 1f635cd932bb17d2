# make demo : set up (a virtual environment, the pinned stack, the plugin build) and run the main job on the embedded
#             synthetic dataset.
# make test : the same set-up, then the whole test suite.
# Both are idempotent: stamps skip the steps whose inputs did not change.
#
# The interpreter: PYTHON=... when given (a command or a path), else the newest of python3.13, 3.12, 3.11 and 3.10
# found (tools/find_python.sh; a pyenv version that is installed but not selected counts). Each minor version gets
# its own environment, .venv-3.X, so that switching PYTHON never mixes two Pythons in one folder; `.venv` is a link
# to the automatic choice's environment (a real .venv folder from before is left as it is). VENV=... overrides the
# folder, and one that holds another Python is refused.
PICKED := $(shell bash tools/find_python.sh $(PYTHON))
ifneq ($(filter error:,$(firstword $(PICKED))),)
$(error $(PICKED))
endif
PY_MINOR    := $(word 1,$(PICKED))
PYTHON_EXE  := $(word 2,$(PICKED))
VENV        ?= .venv-$(PY_MINOR)
$(info Python $(word 3,$(PICKED)) ($(PYTHON_EXE)$(if $(PYTHON),, - the newest of 3.13 to 3.10 found; PYTHON=... to choose)) -> $(VENV))
PY          := $(VENV)/bin/python
DEMO_CONFIG := configs/synthetic/retinanet_R18_synthetic_tta.yaml
DEMO_OUT    ?= output/demo
PYTEST_ARGS ?=
# The CUDA toolkit folder that holds lib64/libcudart.so (torch's guess from the nvcc wrapper is wrong here).
export CUDA_HOME ?= $(shell for d in $$CUDA_HOME /usr/local/cuda-13.0 /usr/local/cuda; do \
	[ -e "$$d/lib64/libcudart.so" ] && { readlink -f $$d; break; }; done)

# The CUDA kernels are built where a GPU is visible (for that GPU: setup.py), as Detectron2 builds its own; where
# none is, the op gets its CPU kernels only, unless FORCE_CUDA=1 (then for one architecture, sm_90 + PTX: the
# H100/H200 this project is lent, unless TORCH_CUDA_ARCH_LIST says otherwise). On a 2-core machine the CUDA part is
# about half of the build's CPU time. FORCE_CUDA and TORCH_CUDA_ARCH_LIST set by the caller win; a plain
# `pip install .` builds them whenever it finds a toolkit (setup.py).
ifneq ($(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu),gpu)
ifeq ($(strip $(FORCE_CUDA)),)
override FORCE_CUDA := 0
endif
export FORCE_CUDA
ifeq ($(origin TORCH_CUDA_ARCH_LIST),undefined)
export TORCH_CUDA_ARCH_LIST := 9.0+PTX
endif
endif
# What the build depends on besides its sources: a change rebuilds the op (.plugin-built). With
# RETINANET_PLUGIN_OP_LIBRARY=PATH (a _C.abi3.so built for the same torch, under any Python) the build installs
# that library instead of compiling (setup.py).
BUILD_VARIANT := FORCE_CUDA=$(FORCE_CUDA) TORCH_CUDA_ARCH_LIST=$(TORCH_CUDA_ARCH_LIST) CUDA_HOME=$(CUDA_HOME) \
	RETINANET_PLUGIN_OP_LIBRARY=$(RETINANET_PLUGIN_OP_LIBRARY)

CSRC := $(wildcard retinanet_plugin/csrc/* retinanet_plugin/csrc/*/*)

.PHONY: demo test test-short lint setup build clean-demo venv-check FORCE

setup: $(VENV)/.stack-installed
build: $(VENV)/.plugin-built

$(PY):
	$(PYTHON_EXE) -m venv $(VENV)

# An environment made by another Python minor version (VENV= pointing at it) is refused, not mixed.
venv-check: | $(PY)
	@$(PY) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; v == "$(PY_MINOR)" or sys.exit("error: $(VENV) holds Python " + v + ", not $(PY_MINOR): remove it or choose another VENV=")'
ifeq ($(PYTHON)$(origin VENV),file)
	@if [ ! -e .venv ] || [ -L .venv ]; then ln -sfn $(VENV) .venv; fi
endif

$(VENV)/.stack-installed: tools/stack-requirements.txt tools/install_stack.sh | venv-check
	bash tools/install_stack.sh $(PY)
	touch $@

# Rewritten only when the variant changes, so that its time stamp says when it last did.
$(VENV)/.build-variant: FORCE | venv-check
	@printf '%s\n' '$(BUILD_VARIANT)' | cmp -s - $@ || printf '%s\n' '$(BUILD_VARIANT)' > $@
FORCE:

$(VENV)/.plugin-built: $(VENV)/.stack-installed $(VENV)/.build-variant setup.py $(CSRC) $(RETINANET_PLUGIN_OP_LIBRARY)
	$(PY) -m pip install --quiet --no-build-isolation -e .
	$(PY) -c "from retinanet_plugin.layers import compiled_ops as c; c.op_available() or exit(c.not_loaded_message()); print('focal loss op built:', c.library_path())"
	touch $@

$(DEMO_OUT)/model_final.pth: $(VENV)/.plugin-built $(DEMO_CONFIG) configs/synthetic/retinanet_R18_synthetic.yaml
	$(PY) train_net.py --config-file $(DEMO_CONFIG) --num-gpus 1 OUTPUT_DIR $(DEMO_OUT)

# Training ends with the evaluations of the final model (its AP tables: the plain model, then with test-time
# augmentation); when the model is up to date, the tables from that run's log are shown again instead of
# evaluating it a second time (evaluated again when the log lacks the augmented one, e.g. when an evaluation was
# interrupted). Then the picture: the predictions of the demo's config (with its test-time augmentation) on 9 val
# images; the plain model's is `tools/predict.py ... TEST.AUG.ENABLED False` (no longer drawn by default: its
# boxes were the worse, and its process took 10 s of the demo on 2 cores).
demo: $(DEMO_OUT)/model_final.pth
	@if grep -q "Evaluation with test-time augmentation done" $(DEMO_OUT)/log.txt 2>/dev/null; then \
		echo "held-out AP of $(DEMO_OUT)/model_final.pth (from $(DEMO_OUT)/log.txt):"; \
		grep -e "copypaste:" -e "test-time augmentation (TEST.AUG" $(DEMO_OUT)/log.txt | tail -7; \
	else \
		$(PY) train_net.py --config-file $(DEMO_CONFIG) --eval-only OUTPUT_DIR $(DEMO_OUT)/eval \
			MODEL.WEIGHTS $(DEMO_OUT)/model_final.pth; \
	fi
	$(PY) tools/predict.py --config-file $(DEMO_CONFIG) --input "datasets/retinanet_synthetic_shapes/val/*" \
		--output $(DEMO_OUT)/predictions --mosaic $(DEMO_OUT)/predictions.png --max-images 9 \
		MODEL.WEIGHTS $(DEMO_OUT)/model_final.pth

# The suite in PYTEST_WORKERS processes (pytest-xdist), each test file's tests in one of them (their module
# fixtures built once): on a 2-core machine two workers took 684 s where one took 972 s (AMD EPYC, 2026-12-02).
# PYTEST_WORKERS=0: one process. Each worker, and what it starts, gets its share of the cores (OMP_NUM_THREADS =
# cores / workers, at least 1; the caller's OMP_NUM_THREADS wins): two workers of two threads each on 2 cores fight
# over them, and two test files took 100 s that way against 74 s with one thread each (AMD EPYC, Zen 3, 2026-12-02).
PYTEST_WORKERS ?= 2
TEST_THREADS := $(shell n=$$(nproc 2>/dev/null || echo 1); w=$(PYTEST_WORKERS); \
	case $$w in (auto|logical) w=$$n;; esac; [ "$$w" -gt 0 ] 2>/dev/null || w=1; echo $$(( n / w > 0 ? n / w : 1 )))
test: $(VENV)/.plugin-built
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$(TEST_THREADS)} $(PY) -m pytest tests $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

# The shorter set .ci/run runs on the supported Pythons other than the default: the build (the prerequisite), the
# environment report (exits 1 when the plugin is not ready), this Python's stack and pip check, the op's CPU tests,
# parity with Detectron2's RetinaNet, and one train_net.py run (train, checkpoint, evaluate).
SHORT_TESTS := tests/test_python_versions.py tests/test_env.py tests/test_focal_loss_op.py \
	tests/test_quality_focal_loss_op.py tests/test_focal_loss_dense_op.py tests/test_parity.py \
	tests/test_train_net_e2e.py::test_one_process_trains_checkpoints_and_evaluates
test-short: $(VENV)/.plugin-built
	$(PY) -m retinanet_plugin.env
	$(PY) -m pytest $(SHORT_TESTS) $(PYTEST_ARGS)

# The house style (pyproject.toml): `ruff format` and `ruff check` must have nothing to change.
lint: $(VENV)/.stack-installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

clean-demo:
	rm -rf $(DEMO_OUT)
