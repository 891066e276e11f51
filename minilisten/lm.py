"""The multimodal listener LM (paper §3.1): any HF causal LM + E_MM embeddings + an LR head.

Token-id layout (``Vocab``; the one place it is defined)::

    [0, n_words)                            backbone word tokens (its tokenizer; rows unchanged)
    n_words + 0 .. n_words + 5              specials <bos> <pad> <sa> </sa> <emo> </emo>
    lr_offset  = n_words + 6                V_LR:  LR code c    -> lr_offset + c    (n_lr = 256)
    sa_offset  = lr_offset + n_lr           V_SA:  SA token t   -> sa_offset + t    (n_sa = 1024)
    emo_offset = sa_offset + n_sa           V_emo: emotion e    -> emo_offset + e   (n_emo = 8)
    size       = emo_offset + n_emo

``n_words`` is the backbone's embedding rows (>= ``len(tokenizer)``; a padded vocabulary keeps
its unused rows). The appended rows are E_MM (specials + V_LR + V_SA + V_emo), initialised by
``resize_token_embeddings`` (mean/covariance of the word rows); the word rows are not touched.

Sequences (Eq. 1 / Eq. 2). For a clip with ``n`` LR steps of ``r = 8`` frames::

    history = [<bos>] + W^h                    (most recent ``history_tokens`` word tokens)
    steps[i] = W_i + [<sa>] + SA_i + [</sa>] + [<emo>, emo_i, </emo>]      (enabled modalities)
    S  = history + steps[0] + [LR_0] + steps[1] + [LR_1] + ... + steps[n-1] + [LR_{n-1}]
    S' = history + steps[0] + steps[1] + ... + steps[n-1]                   (stage 1)

``LR_i`` is predicted by ``lr_head`` at the position just before it (the last token of
``steps[i]``), so it sees all speaker tokens up to step i and ``LR_<i`` (causality). Which word
goes to which step: :mod:`minilisten.speaker` (``word_placement`` "eq1" | "lm_listener").

Losses: stage 1 (Eq. 3) next-token cross-entropy through the backbone's LM head where the next
token is a W, SA or emo token of the steps (not history, not the special markers); stage 2
(Eq. 4) cross-entropy of ``lr_head`` where the next token is an LR token. During stage 2 training
a fraction ``lr_noise`` (LM-listener: 0.5) of *input* LR tokens is replaced by random codes.

Context policy (windows longer than the backbone's context ``max_len``): sliding windows with
history. The context for ``LR_i`` starts at step ``j_i`` (:meth:`ListenerLM.context_plan`,
non-decreasing): ``[<bos>] + H_j + steps[j] + [LR_j] + ... + steps[i]``, where ``H_j`` is the
last ``history_tokens`` word tokens of W^h followed by the words of steps ``< j`` (SA, emo and
LR of dropped steps are discarded). ``j`` stays put while the context (plus ``LR_i``) fits in
``max_len``; on overflow it jumps to the smallest ``j`` whose context fits in ``window_keep *
max_len`` (0.5), so an incremental decoder re-fills its cache once per jump, not every step.
Training (:meth:`ListenerLM.build_sequences`) cuts the same chunks, so training and inference see
identical contexts. A single step longer than ``max_len`` raises.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.segment import N_EMOTIONS, Segment
from .speaker import MODALITIES, PLACEMENTS, check_modalities, speaker_tokens

SPECIALS = ("<bos>", "<pad>", "<sa>", "</sa>", "<emo>", "</emo>")
IGNORE = -100
FORMAT = "minilisten.ListenerLM"


# ----------------------------------------------------------------------------- vocabulary
@dataclass(frozen=True)
class Vocab:
    """Token-id layout (see the module docstring). ``lr/sa/emo(code)`` map a code (int or
    tensor) to its token id; ints are range-checked, tensors are offset without a check (no
    host sync in decoding loops: validate codes before)."""
    n_words: int
    n_lr: int = 256
    n_sa: int = 1024
    n_emo: int = N_EMOTIONS

    def __post_init__(self):
        for f in fields(self):   # V_SA / V_emo may be empty (0): data without SA tokens or emotion
            v, low = getattr(self, f.name), (0 if f.name in ("n_sa", "n_emo") else 1)
            if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low):
                raise ValueError(f"Vocab.{f.name}: expected an integer >= {low}, got {v!r}")

    bos = property(lambda self: self.n_words + 0)
    pad = property(lambda self: self.n_words + 1)
    sa_start = property(lambda self: self.n_words + 2)
    sa_end = property(lambda self: self.n_words + 3)
    emo_start = property(lambda self: self.n_words + 4)
    emo_end = property(lambda self: self.n_words + 5)
    lr_offset = property(lambda self: self.n_words + len(SPECIALS))
    sa_offset = property(lambda self: self.lr_offset + self.n_lr)
    emo_offset = property(lambda self: self.sa_offset + self.n_sa)
    size = property(lambda self: self.emo_offset + self.n_emo)

    def _map(self, code, offset: int, n: int, name: str):
        if torch.is_tensor(code):
            return code + offset
        if isinstance(code, np.ndarray):
            if code.size and (code.min() < 0 or code.max() >= n):
                bad = code.min() if code.min() < 0 else code.max()
                raise ValueError(f"{name} codes: expected values in [0, {n}), got {bad}")
            return code.astype(np.int64) + offset
        c = int(code)
        if not 0 <= c < n:
            raise ValueError(f"{name} code: expected a value in [0, {n}), got {code}")
        return offset + c

    def lr(self, code):
        """LR code(s) in ``[0, n_lr)`` -> token id(s)."""
        return self._map(code, self.lr_offset, self.n_lr, "LR")

    def sa(self, code):
        return self._map(code, self.sa_offset, self.n_sa, "SA")

    def emo(self, code):
        return self._map(code, self.emo_offset, self.n_emo, "emo")

    def lr_code(self, token_id: int) -> int:
        """Inverse of :meth:`lr`."""
        if not self.lr_offset <= token_id < self.sa_offset:
            raise ValueError(f"token {token_id}: expected an LR token id in [{self.lr_offset}, {self.sa_offset})")
        return token_id - self.lr_offset

    def is_word(self, token_id: int) -> bool:
        return 0 <= token_id < self.n_words

    def kind(self, token_id: int) -> str:
        """``"W"``, ``"SA"``, ``"emo"``, ``"LR"`` or the special's name (``"<sa>"``, ...)."""
        t = int(token_id)
        if 0 <= t < self.n_words:
            return "W"
        if t < self.lr_offset and t >= 0:
            return SPECIALS[t - self.n_words]
        if t < self.sa_offset and t >= 0:
            return "LR"
        if t < self.emo_offset and t >= 0:
            return "SA"
        if t < self.size and t >= 0:
            return "emo"
        raise ValueError(f"token {token_id}: outside the vocabulary [0, {self.size})")

    def kinds(self, ids) -> list[str]:
        """Map a sequence back to its modalities (debugging and tests)."""
        return [self.kind(t) for t in (ids.tolist() if hasattr(ids, "tolist") else ids)]


# ----------------------------------------------------------------------------- config, sequences
@dataclass
class LMConfig:
    modalities: tuple[str, ...] = MODALITIES  # subset of ("W", "SA", "emo"); words-only = LM-listener
    n_lr: int = 256                  # V_LR: VQ-VAE codebook size
    n_sa: int = 1024                 # V_SA: SpeechTokenizer codebook size (0: no SA block, e.g. words-only data)
    n_emo: int = N_EMOTIONS          # V_emo: EMOCA classes (0: no emo block)
    r: int = 8                       # frames per LR token
    word_placement: str = "eq1"      # "eq1" (paper) | "lm_listener" (one step later, SYSTEM.md §8)
    history_tokens: int = 48         # budget of W^h word tokens (most recent kept)
    max_len: int = 0                 # context limit in tokens; 0 = the backbone's n_positions
    window_keep: float = 0.5         # sliding policy: restart with a context <= window_keep * max_len
    lora: bool = False               # LoRA through peft (LLaMA family); word embeddings frozen, E_MM rows trained
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] | None = None  # None = peft's default for the model type

    def __post_init__(self):
        self.modalities = check_modalities(self.modalities)
        for m, n, what in (("SA", self.n_sa, "n_sa"), ("emo", self.n_emo, "n_emo")):
            if m in self.modalities and not (isinstance(n, int) and n >= 1):
                raise ValueError(f"LMConfig.{what}: modality {m!r} needs a vocabulary of >= 1 token, got {n!r}")
        if self.word_placement not in PLACEMENTS:
            raise ValueError(f"word_placement: expected one of {PLACEMENTS}, got {self.word_placement!r}")
        if not 0 < self.window_keep <= 1:
            raise ValueError(f"window_keep: expected a value in (0, 1], got {self.window_keep}")
        if self.lora_targets is not None:
            self.lora_targets = tuple(self.lora_targets)


@dataclass
class LMSequence:
    """One training/eval sequence. ``targets[p]`` is what position ``p`` must predict (stage 2:
    the LR code of the next token; stage 1: the next token id), ``IGNORE`` where no loss counts."""
    ids: np.ndarray        # (L,) int64 token ids
    targets: np.ndarray    # (L,) int64
    stage: int             # 1 = S' (Eq. 2/3), 2 = S (Eq. 1/4)
    n_prefix: int          # length of [<bos>] + W^h
    first_step: int        # steps [first_step, last_step] are predicted in this sequence
    last_step: int

    @property
    def loss_mask(self) -> np.ndarray:
        return self.targets != IGNORE


def collate(seqs: list[LMSequence], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest: ``input_ids``, ``attention_mask``, ``targets`` of shape (B, L)."""
    L = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    tgt = torch.full((len(seqs), L), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for b, s in enumerate(seqs):
        n = len(s.ids)
        ids[b, :n] = torch.from_numpy(s.ids)
        tgt[b, :n] = torch.from_numpy(s.targets)
        mask[b, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "targets": tgt}


# ----------------------------------------------------------------------------- backbones
def _context_length(config) -> int:
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        v = getattr(config, name, None)
        if isinstance(v, int) and v > 0:
            return v
    raise ValueError(f"backbone config {type(config).__name__}: cannot find its context length (n_positions / "
                     "max_position_embeddings); set LMConfig.max_len")


def load_backbone(name_or_path: str, dtype: torch.dtype | None = None):
    """``(model, tokenizer)`` of a transformers causal LM from a local directory or a hub name
    (GPT-2 family: full fine-tuning; LLaMA family: use ``LMConfig(lora=True)``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    local = Path(name_or_path).is_dir()
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
        kw = {"dtype": dtype} if dtype is not None else {}
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kw)
    except (OSError, ValueError) as e:
        where = "the local directory" if local else "no local directory of that name exists, and the hub"
        raise OSError(f"backbone {name_or_path!r}: could not load a causal LM + tokenizer ({where} failed: {e}). "
                      "Without internet, download it elsewhere (save_pretrained) and pass the directory.") from e
    return model, tok


def train_word_tokenizer(texts, vocab_size: int = 1024):
    """A byte-level BPE tokenizer (``tokenizers``) trained on words; each word is encoded with a
    leading space as GPT-2 does. Returns a transformers fast tokenizer (saved with checkpoints)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((" " + t.strip() for t in texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


DEFAULT_ARCHS = ("llama", "gpt2")


def scratch_backbone(arch: str, vocab_size: int, n_layer: int, n_embd: int, n_head: int, n_positions: int,
                     bos_token_id: int | None = None, eos_token_id: int | None = None):
    """A randomly initialised causal LM of the from-scratch layouts of :func:`default_backbone`
    (``arch`` in ``DEFAULT_ARCHS``; the benchmark builds its models with it too)."""
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        return GPT2LMHeadModel(GPT2Config(
            vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
            bos_token_id=bos_token_id, eos_token_id=eos_token_id, resid_pdrop=0.1, embd_pdrop=0.1,
            attn_pdrop=0.0))  # no attention dropout: lets SDPA use its fused causal kernel
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=vocab_size, hidden_size=n_embd, intermediate_size=4 * n_embd, num_hidden_layers=n_layer,
            num_attention_heads=n_head, num_key_value_heads=n_head, max_position_embeddings=n_positions,
            bos_token_id=bos_token_id, eos_token_id=eos_token_id, tie_word_embeddings=True, attention_dropout=0.0))
    raise ValueError(f"arch: expected one of {DEFAULT_ARCHS}, got {arch!r}")


def default_backbone(texts, n_layer: int = 2, n_embd: int = 128, n_head: int = 4, n_positions: int = 1024,
                     vocab_size: int = 1024, seed: int = 0, arch: str = "llama"):
    """The offline default: a small causal LM from scratch + a BPE tokenizer trained on ``texts``
    (the corpus's words). Returns ``(model, tokenizer)``.

    ``arch="llama"`` (default): LLaMA layout (rotary positions, RMSNorm, SwiGLU of width 4 x
    ``n_embd``, tied embeddings); ``arch="gpt2"``: GPT-2 (learned absolute positions). Measured on
    the synthetic corpus (README, "Why the default from-scratch backbone is rotary"): trained from
    scratch, the rotary model learns the interleaved multimodal sequences much faster (LR accuracy
    0.073 vs 0.041 after 400 stage-2 steps), because the LR token of step i sits ~20 tokens after
    the previous one at positions that vary, and learned absolute positions must first be learned
    one by one (a pretrained GPT-2, as in the paper, has them already: pass it by ``--backbone``)."""
    tok = train_word_tokenizer(texts, vocab_size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = scratch_backbone(arch, len(tok), n_layer, n_embd, n_head, n_positions, tok.bos_token_id, tok.eos_token_id)
    return model, tok


# ----------------------------------------------------------------------------- the model
class ListenerLM(nn.Module):
    """A causal LM over interleaved speaker/listener tokens (see the module docstring).

    ``backbone``: a transformers ``AutoModelForCausalLM`` (wrapped by peft when ``config.lora``);
    its embeddings are resized to ``vocab.size`` on construction (word rows unchanged).
    ``lr_head``: ``nn.Linear(hidden, n_lr)``, the extra affine LR head.
    """

    def __init__(self, backbone, tokenizer, config: LMConfig | None = None, vocab: Vocab | None = None):
        super().__init__()
        self.config = config = config or LMConfig()
        self.tokenizer = tokenizer
        rows = backbone.get_input_embeddings().weight.shape[0]
        if vocab is None:  # fresh: extend the word vocabulary with E_MM
            if len(tokenizer) > rows:
                raise ValueError(f"backbone/tokenizer mismatch: tokenizer has {len(tokenizer)} tokens, the backbone's "
                                 f"embedding only {rows} rows")
            vocab = Vocab(rows, config.n_lr, config.n_sa, config.n_emo)
            backbone.resize_token_embeddings(vocab.size)
        else:
            if (vocab.n_lr, vocab.n_sa, vocab.n_emo) != (config.n_lr, config.n_sa, config.n_emo):
                raise ValueError(f"vocab {vocab} does not match config n_lr/n_sa/n_emo = {config.n_lr}/{config.n_sa}/{config.n_emo}")
            if rows != vocab.size:
                raise ValueError(f"backbone embedding has {rows} rows, the vocabulary layout needs {vocab.size}")
            if len(tokenizer) > vocab.n_words:
                raise ValueError(f"tokenizer has {len(tokenizer)} tokens, the vocabulary's word block only {vocab.n_words}")
        self.vocab = vocab
        self.max_len = config.max_len or _context_length(backbone.config)
        if config.lora:
            backbone = self._apply_lora(backbone)
        self.backbone = backbone
        hidden = self._base().config.get_text_config().hidden_size
        self.lr_head = nn.Linear(hidden, vocab.n_lr)
        nn.init.normal_(self.lr_head.weight, std=0.02)
        nn.init.zeros_(self.lr_head.bias)
        self._word_cache: dict[str, list[int]] = {}
        probe = tokenizer.convert_ids_to_tokens(tokenizer.encode("hello", add_special_tokens=False))
        self._space_prefix = not (probe and probe[0].startswith("\u2581"))  # sentencepiece adds its own "▁"

    # -- construction helpers
    @classmethod
    def from_backbone(cls, backbone: str, config: LMConfig | None = None, **overrides) -> "ListenerLM":
        """Load a hub name or local directory (``load_backbone``) and extend it."""
        config = config or LMConfig(**overrides)
        model, tok = load_backbone(backbone)
        return cls(model, tok, config)

    def _apply_lora(self, backbone):
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as e:
            raise ImportError("LoRA needs peft: pip install 'minilisten[lora]' (or pip install peft)") from e
        c, v = self.config, self.vocab
        new = list(range(v.n_words, v.size))
        emb, out = backbone.get_input_embeddings(), backbone.get_output_embeddings()
        names = {id(m): n for n, m in backbone.named_modules()}
        emb_name = names[id(emb)].split(".")[-1]
        tied = out is not None and out.weight is emb.weight
        tti = {emb_name: new} if (tied or out is None) else {emb_name: new, names[id(out)].split(".")[-1]: new}
        lcfg = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                          target_modules=list(c.lora_targets) if c.lora_targets else None, trainable_token_indices=tti)
        return get_peft_model(backbone, lcfg)

    def _base(self):
        """The transformers model (inside the peft wrapper when LoRA is on)."""
        return self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone

    def _decoder(self):
        base = self._base()
        return getattr(base, base.base_model_prefix)

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.config.modalities

    @property
    def word_placement(self) -> str:
        return self.config.word_placement

    @property
    def device(self) -> torch.device:
        return self.lr_head.weight.device

    # -- tokens
    def word_ids(self, text: str) -> list[int]:
        """Token ids of one word (GPT-2 style: with a leading space), cached."""
        ids = self._word_cache.get(text)
        if ids is None:
            t = text.strip()
            ids = self.tokenizer.encode((" " + t) if self._space_prefix else t, add_special_tokens=False)
            if any(not 0 <= i < self.vocab.n_words for i in ids):
                raise ValueError(f"word {text!r}: tokenizer produced ids {ids} outside the word block [0, {self.vocab.n_words})")
            self._word_cache[text] = ids
        return ids

    def speaker_steps(self, seg: Segment, n_steps: int | None = None) -> tuple[list[int], list[list[int]]]:
        """``(history, steps)``: ``history = [<bos>] + W^h`` ids; ``steps[i]`` = ids of step i's
        words, ``<sa> ... </sa>`` and ``<emo> e </emo>`` (enabled modalities), ``i < n_steps``
        (default ``T // r``)."""
        v = self.vocab
        st = speaker_tokens(seg, self.modalities, n_steps, self.config.r, self.word_placement, v.n_sa)
        hist_words = [self.word_ids(w.text) for w in st.history]
        kept, total = [], 0
        for ids in reversed(hist_words):          # whole words, most recent first, within the budget
            if total + len(ids) > self.config.history_tokens:
                break
            kept.append(ids)
            total += len(ids)
        history = [v.bos] + [t for ids in reversed(kept) for t in ids]
        steps = []
        for i in range(st.n_steps):
            s: list[int] = []
            if st.words is not None:
                for w in st.words[i]:
                    s += self.word_ids(w.text)
            if st.sa is not None:
                s += [v.sa_start, *(st.sa[i] + v.sa_offset).tolist(), v.sa_end]
            if st.emo is not None:
                s += [v.emo_start, v.emo(int(st.emo[i])), v.emo_end]
            steps.append(s)
        return history, steps

    def _check_codes(self, seg: Segment, lr_codes) -> np.ndarray:
        c = lr_codes.detach().cpu().numpy() if torch.is_tensor(lr_codes) else np.asarray(lr_codes)
        if c.ndim != 1 or not np.issubdtype(c.dtype, np.integer):
            raise ValueError(f"lr_codes: expected a 1-D integer array (T // r,), got shape {c.shape} dtype {c.dtype}")
        if c.size and (c.min() < 0 or c.max() >= self.vocab.n_lr):
            bad = c.min() if c.min() < 0 else c.max()
            raise ValueError(f"lr_codes: expected codes in [0, V_LR={self.vocab.n_lr}), got {bad}")
        if c.size > seg.T // self.config.r:
            raise ValueError(f"lr_codes: expected at most T // r = {seg.T} // {self.config.r} = {seg.T // self.config.r} "
                             f"codes for segment {seg.name!r}, got {c.size}")
        return c.astype(np.int64)

    # -- context policy
    def _prefix(self, history: list[int], steps: list[list[int]], j: int) -> list[int]:
        """``[<bos>] + H_j``: W^h then the words of steps < j, last ``history_tokens`` tokens."""
        if j == 0:
            return list(history)
        words = history[1:] + [t for s in steps[:j] for t in s if 0 <= t < self.vocab.n_words]
        return history[:1] + words[len(words) - min(len(words), self.config.history_tokens):]

    def context_plan(self, history: list[int], steps: list[list[int]], with_lr: bool = True,
                     max_len: int | None = None) -> list[int]:
        """Start step ``j_i`` of the context of each step ``i`` (the sliding policy in the module
        docstring). All zeros when the whole sequence fits."""
        L = max_len or self.max_len
        lens = [len(s) + (1 if with_lr else 0) for s in steps]   # step i's tokens + LR_i
        cum = np.concatenate([[0], np.cumsum(lens)]) if lens else np.zeros(1, np.int64)

        def length(j: int, i: int) -> int:   # context up to and including LR_i (or step i for S')
            return len(self._prefix(history, steps, j)) + int(cum[i + 1] - cum[j]) + (0 if with_lr else 1)

        plan, j = [], 0
        for i in range(len(steps)):
            if length(j, i) > L:
                budget = max(1, int(self.config.window_keep * L))
                j2 = next((k for k in range(j + 1, i + 1) if length(k, i) <= budget), None)
                if j2 is None:
                    j2 = i
                    if length(i, i) > L:
                        raise ValueError(f"step {i}: {lens[i]} tokens plus the history do not fit the context of "
                                         f"{L} tokens; raise max_len or lower history_tokens")
                j = j2
            plan.append(j)
        return plan

    def context_ids(self, history: list[int], steps: list[list[int]], codes: list[int], i: int, j: int) -> list[int]:
        """``[<bos>] + H_j + steps[j] + [LR_j] + ... + steps[i]``: the input whose last position
        predicts ``LR_i`` (``codes`` holds at least ``LR_0 .. LR_{i-1}``)."""
        ids = self._prefix(history, steps, j)
        for k in range(j, i):
            ids += steps[k]
            ids.append(self.vocab.lr(int(codes[k])))
        ids += steps[i]
        return ids

    # -- sequences
    def build_sequences(self, seg: Segment, lr_codes=None, n_steps: int | None = None) -> list[LMSequence]:
        """S (Eq. 1, stage 2) when ``lr_codes`` (``(n,)`` ints < V_LR) are given, else S' (Eq. 2,
        stage 1) over ``n_steps`` (default ``T // r``) steps; one sequence per context chunk of
        the sliding policy (one when the clip fits)."""
        codes = None
        if lr_codes is not None:
            codes = self._check_codes(seg, lr_codes)
            if n_steps is not None and n_steps != codes.size:
                raise ValueError(f"n_steps: expected len(lr_codes) = {codes.size}, got {n_steps}")
            n_steps = codes.size
        history, steps = self.speaker_steps(seg, n_steps)
        if not steps:
            raise ValueError(f"segment {seg.name!r}: T={seg.T} frames holds no LR step of r={self.config.r} frames")
        stage = 1 if codes is None else 2
        plan = self.context_plan(history, steps, with_lr=codes is not None)
        out = []
        for j in sorted(set(plan)):
            first = plan.index(j)
            last = len(plan) - 1 - plan[::-1].index(j)
            out.append(self._chunk(history, steps, codes, j, first, last, stage))
        return out

    def build_sequence(self, seg: Segment, lr_codes=None, n_steps: int | None = None) -> LMSequence:
        """As :meth:`build_sequences` for a clip that fits the context (raises otherwise)."""
        seqs = self.build_sequences(seg, lr_codes, n_steps)
        if len(seqs) > 1:
            raise ValueError(f"segment {seg.name!r}: the sequence exceeds the context of {self.max_len} tokens; use "
                             "build_sequences (sliding windows with history) or shorter windows")
        return seqs[0]

    def _chunk(self, history, steps, codes, j, first, last, stage) -> LMSequence:
        v = self.vocab
        ids = self._prefix(history, steps, j)
        n_prefix = len(ids)
        tg: list[int] = [IGNORE] * n_prefix
        for k in range(j, last + 1):
            s = steps[k]
            if stage == 1:
                # Eq. 3: the position before each W / SA / emo token of a predicted step counts
                for t in s:
                    kind = v.kind(t)
                    tg[-1] = t if (k >= first and kind in ("W", "SA", "emo")) else tg[-1]
                    ids.append(t)
                    tg.append(IGNORE)
            else:
                ids += s
                tg += [IGNORE] * len(s)
                if k >= first:
                    tg[-1] = int(codes[k])        # Eq. 4: predicts LR_k, the next token
                ids.append(v.lr(int(codes[k])))
                tg.append(IGNORE)
        return LMSequence(np.asarray(ids, np.int64), np.asarray(tg, np.int64), stage, n_prefix, first, last)

    # -- forward
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Plain HF forward (no cache): ``(B, L)`` ids -> ``(B, L, hidden)`` last hidden states.
        ``position_ids`` (B, L) default to ``0 .. L-1``."""
        kw = {} if position_ids is None else {"position_ids": position_ids}
        out = self._decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kw)
        return out.last_hidden_state


    def lr_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L, n_lr)`` LR-head logits at every position."""
        return self.lr_head(self.hidden_states(input_ids, attention_mask))

    def forward(self, input_ids, attention_mask=None):
        return self.lr_logits(input_ids, attention_mask)

    def noise_lr_inputs(self, input_ids: torch.Tensor, fraction: float, generator: torch.Generator | None = None):
        """LM-listener's robustness trick: each input LR token is replaced, with probability
        ``fraction``, by a uniformly random LR token (targets are unchanged)."""
        if fraction <= 0:
            return input_ids
        v = self.vocab
        is_lr = (input_ids >= v.lr_offset) & (input_ids < v.sa_offset)
        u = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)
        rnd = torch.randint(0, v.n_lr, input_ids.shape, generator=generator).to(input_ids.device) + v.lr_offset
        return torch.where(is_lr & (u < fraction), rnd, input_ids)

    def loss(self, batch: dict[str, torch.Tensor], stage: int, lr_noise: float = 0.0,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Mean cross-entropy over the positions with a target (stage 1: LM head over the whole
        vocabulary; stage 2: LR head). Returns ``(loss, {"correct", "count"})``."""
        dev = self.device
        ids = batch["input_ids"].to(dev)
        if stage == 2 and lr_noise > 0:
            ids = self.noise_lr_inputs(ids, lr_noise, generator)
        tgt = batch["targets"].to(dev)
        # Right padding + causal attention: no real position attends to a pad, so no mask is
        # needed (and without one SDPA takes its fused causal path instead of an (L, L) mask).
        h = self.hidden_states(ids)
        sel = tgt != IGNORE
        hs, ts = h[sel], tgt[sel]
        if stage == 2:
            logits = self.lr_head(hs)
        elif stage == 1:
            logits = self._base().get_output_embeddings()(hs)
        else:
            raise ValueError(f"stage: expected 1 or 2, got {stage!r}")
        loss = F.cross_entropy(logits.float(), ts)
        with torch.no_grad():
            correct = (logits.argmax(-1) == ts).sum()
        return loss, {"correct": int(correct), "count": int(ts.numel())}

    # -- decoding (reference)
    @torch.no_grad()
    def generate_reference(self, history: list[int], steps: list[list[int]], max_len: int | None = None) -> list[int]:
        """LM-listener's way: for each step, recompute the whole context (no cache) and take the
        argmax of the LR head at its last position. Returns the LR codes ``(len(steps),)``."""
        was = self.training
        self.eval()
        try:
            plan = self.context_plan(history, steps, with_lr=True, max_len=max_len)
            codes: list[int] = []
            for i in range(len(steps)):
                ctx = torch.tensor([self.context_ids(history, steps, codes, i, plan[i])], device=self.device)
                codes.append(int(self.lr_logits(ctx)[0, -1].argmax()))
        finally:
            self.train(was)
        return codes

    def generate(self, seg: Segment, n_steps: int | None = None) -> np.ndarray:
        """Greedy LR codes ``(n_steps,)`` for a clip (reference decoder)."""
        history, steps = self.speaker_steps(seg, n_steps)
        return np.asarray(self.generate_reference(history, steps), np.int64)

    def merged_backbone(self):
        """A plain transformers model with LoRA (and trainable-token deltas) merged in; the
        backbone itself when LoRA is off. For fast decoders that read HF weights."""
        if not self.config.lora:
            return self.backbone
        return copy.deepcopy(self.backbone).merge_and_unload()

    # -- persistence
    def save_pretrained(self, directory) -> None:
        """``config.json`` + ``model.safetensors`` + ``tokenizer/``, each file written atomically
        (``config.json`` last, so a directory with a config is complete)."""
        from .checkpoint import atomic_save_tensors, atomic_write_text
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        base_cfg = self._base().config.to_dict()
        cfg = {"format": FORMAT, "version": 1, "lm": asdict(self.config), "vocab": asdict(self.vocab),
               "tokenizer_len": len(self.tokenizer), "backbone_config": base_cfg}
        atomic_save_tensors(d / "model.safetensors", self.state_dict())
        tmp = Path(tempfile.mkdtemp(dir=d, prefix=".tokenizer."))
        try:
            self.tokenizer.save_pretrained(str(tmp))
            (d / "tokenizer").mkdir(exist_ok=True)
            for f in tmp.iterdir():
                os.replace(f, d / "tokenizer" / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        atomic_write_text(d / "config.json", json.dumps(cfg, indent=2, sort_keys=True, default=str))

    @classmethod
    def from_pretrained(cls, directory, map_location: str | torch.device = "cpu") -> "ListenerLM":
        """Everything needed for inference from a :meth:`save_pretrained` directory."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        d = Path(directory)
        for name in ("config.json", "model.safetensors", "tokenizer"):
            if not (d / name).exists():
                raise FileNotFoundError(f"ListenerLM checkpoint {str(d)!r}: missing {name}")
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
        if cfg.get("format") != FORMAT:
            raise ValueError(f"{str(d)!r}: expected a {FORMAT} checkpoint, got format {cfg.get('format')!r}")
        tok = AutoTokenizer.from_pretrained(str(d / "tokenizer"))
        vocab = Vocab(**cfg["vocab"])
        if len(tok) != cfg["tokenizer_len"] or len(tok) > vocab.n_words:
            raise ValueError(f"{str(d)!r}: the tokenizer has {len(tok)} tokens but the checkpoint's vocabulary was built "
                             f"for {cfg['tokenizer_len']} (word block {vocab.n_words}); tokenizer and weights do not match")
        bc = dict(cfg["backbone_config"])
        bconf = AutoConfig.for_model(bc.pop("model_type"), **bc)
        if bconf.get_text_config().vocab_size != vocab.size:
            raise ValueError(f"{str(d)!r}: backbone vocab_size {bconf.get_text_config().vocab_size} != vocabulary size {vocab.size}")
        lm_cfg = LMConfig(**cfg["lm"])
        backbone = AutoModelForCausalLM.from_config(bconf)
        model = cls(backbone, tok, lm_cfg, vocab=vocab)
        sd = load_file(str(d / "model.safetensors"))
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ValueError(f"{str(d)!r}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
        return model.to(map_location)
