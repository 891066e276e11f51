"""Data: the ``Segment`` type, the synthetic dyadic corpus, peer-format readers, windows."""
from .formats import (  # noqa: F401
                      Corpus,
                      detect_layout,
                      load_corpus,
                      load_dataset,
                      load_learning2listen,
                      load_lm_listener,
                      save_corpus,
)
from .segment import D_MOTION, EMOTIONS, EXP, N_EMOTIONS, N_EXP, N_POSE, N_SHAPE, POSE, Segment, Word  # noqa: F401
from .synthetic import RESPONSES, identity_style, synthetic_corpus  # noqa: F401
from .windows import lm_listener_eval_clips, motion_stats  # noqa: F401
