# `make run`: set up a virtual environment and start the app on http://localhost:8501
# `make test`: set up the same environment and run the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	touch $@

.PHONY: setup run test bench
setup: $(BIN)/.installed

run: setup
	$(BIN)/streamlit run app.py

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/accuracy.py
