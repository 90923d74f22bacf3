"""Adapters that let the standard evaluation kits run this implementation.

  vlmeval.MiniCPMV        a VLMEvalKit `BaseModel` (`generate_inner(message, dataset)`, official prompts)
  lmms_eval.MiniCPMVLmms  an lmms-eval `lmms` (`generate_until`, `loglikelihood`, multi-round)

Both import without the kits installed (then their base classes are local stand-ins with the same
call shapes). This module stays light: lmms-eval loads `lmms_eval_manifest` through the
`lmms_eval.models` entry point while it builds its model registry.
"""

from __future__ import annotations

LMMS_EVAL_MODEL_ID = "minicpmv"
LMMS_EVAL_CLASS_PATH = "minicpmv.eval.adapters.lmms_eval.MiniCPMVLmms"


def lmms_eval_manifest():
    """The lmms-eval `ModelManifest` of this package (entry point `lmms_eval.models: minicpmv`).

    Registers `--model minicpmv` (alias `minicpmv_4_5`) as a "simple" model, the interface that
    carries loglikelihood requests; the class is imported only when lmms-eval resolves the name.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=LMMS_EVAL_MODEL_ID, simple_class_path=LMMS_EVAL_CLASS_PATH, aliases=("minicpmv_4_5",))
