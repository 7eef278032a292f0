"""Where the tests find the real all-MiniLM-L6-v2, and the mark for tests that need it.

The real model is not in git. CI provides it through LOCALMEM_MODELS_DIR (see .ci/run);
elsewhere the tests that need it skip and say how to provide it. Read at import, before
any fixture changes the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MODELS_DIR = os.environ.get("LOCALMEM_MODELS_DIR", "")
MINILM = Path(MODELS_DIR or "/work/shared/models") / "all-MiniLM-L6-v2"
HAVE_MINILM = (MINILM / "model.onnx").is_file() and (MINILM / "tokenizer.json").is_file()
needs_minilm = pytest.mark.skipif(
    not (MODELS_DIR and HAVE_MINILM),
    reason="needs the real all-MiniLM-L6-v2: set LOCALMEM_MODELS_DIR to a folder holding "
    "all-MiniLM-L6-v2/ (.ci/run does), or run `localmem models download all-MiniLM-L6-v2` "
    "on a machine with internet",
)
