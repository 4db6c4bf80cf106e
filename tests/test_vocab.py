"""Each vocabulary has one home; the code that implements a choice covers exactly its vocabulary."""

import pytest
import torch

from lens_model.devices import resolve_dtype
from lens_model.model.config import PromptConfig
from lens_model.vocab import ANSWER_FORMATS, DTYPE_ALIASES, DTYPES, canonical_dtype
from training.config import PRECISIONS, AlignConfig
from training.engine import resolve_precision
from training.runner import TRAINABLE_MODULES
from training.vocab import TRAINABLE_PARTS


def test_every_dtype_name_and_alias_is_a_torch_dtype():
    assert [canonical_dtype(n) for n in ("bf16", "fp16", "fp32")] == ["bfloat16", "float16", "float32"]
    for name in (*DTYPES[1:], *DTYPE_ALIASES):
        assert resolve_dtype(name, torch.device("cpu")) == getattr(torch, canonical_dtype(name))
        assert isinstance(getattr(torch, canonical_dtype(name)), torch.dtype)
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        canonical_dtype("int8")


def test_training_precision_takes_both_spellings():
    assert set(PRECISIONS) == {"auto", *DTYPES, *DTYPE_ALIASES}
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == resolve_precision("float32", cpu) == torch.float32
    assert resolve_precision("auto", cpu) == torch.float32
    assert AlignConfig(precision="bfloat16").precision == "bfloat16"


def test_trainable_parts_are_the_parts_the_freezer_knows():
    assert tuple(TRAINABLE_MODULES) == TRAINABLE_PARTS


def test_every_answer_format_has_a_prompt():
    assert [PromptConfig.for_format(f).answer_format for f in ANSWER_FORMATS] == list(ANSWER_FORMATS)
