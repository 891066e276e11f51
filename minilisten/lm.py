"""The multimodal listener LM (paper §3.1): any HF causal LM + E_MM embeddings + an LR head.

The token layout, the time -> step rules (Eq. 1) and the interleaved sequences with their
sliding context policy live in :mod:`minilisten.tokens` (``Vocab``, ``IGNORE``, ``LMSequence``
and ``collate`` are importable from here too). This module holds the model: a backbone whose
embeddings are extended with E_MM (specials + V_LR + V_SA + V_emo rows, initialised by
``resize_token_embeddings`` from the mean/covariance of the word rows; word rows untouched) and
the affine ``lr_head``; :class:`ListenerLM` binds the tokens rules to its tokenizer and config
(``speaker_steps``, ``context_plan``, ``context_ids``, ``build_sequences``).

Losses: stage 1 (Eq. 3) next-token cross-entropy through the backbone's LM head where the next
token is a W, SA or emo token of the steps (not history, not the special markers); stage 2
(Eq. 4) cross-entropy of ``lr_head`` where the next token is an LR token. During stage 2 training
a fraction ``lr_noise`` (LM-listener: 0.5) of *input* LR tokens is replaced by random codes.
Decoding: :mod:`minilisten.generate` (the no-cache reference ``generate_nocache`` and the fast
decoders).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import tokens
from .data.segment import N_EMOTIONS, Segment, Word
from .tokens import IGNORE, MODALITIES, PLACEMENTS, SPECIALS, LMSequence, Vocab, check_modalities, collate  # noqa: F401

FORMAT = "minilisten.ListenerLM"


# ----------------------------------------------------------------------------- config, sequences
@dataclass
class LMConfig:
    """The listener LM's options. ``r`` (frames per LR token) is not a free choice: its source is
    the VQ-VAE that made the LR codes (``VQConfig.rate``, ``VQVAE.rate``); it is recorded here so a
    checkpoint decodes without its VQ-VAE, and where both meet (``StreamingListener``) a
    mismatch is refused. ``fps`` is the motion frame rate of the training data; the streaming
    API refuses streams at another rate."""
    modalities: tuple[str, ...] = MODALITIES  # subset of ("W", "SA", "emo"); words-only = LM-listener
    n_lr: int = 256                  # V_LR: VQ-VAE codebook size
    n_sa: int = 1024                 # V_SA: SpeechTokenizer codebook size (0: no SA block, e.g. words-only data)
    n_emo: int = N_EMOTIONS          # V_emo: EMOCA classes (0: no emo block)
    r: int = 8                       # frames per LR token = VQConfig.rate of the codes' VQ-VAE (see above)
    fps: float = 30.0                # motion frame rate the model is trained at (checkpoints without it: 30)
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
        if isinstance(self.r, bool) or not (isinstance(self.r, (int, np.integer)) and self.r >= 1):
            raise ValueError(f"LMConfig.r: expected an int >= 1 (frames per LR token), got {self.r!r}")
        if isinstance(self.fps, bool) or not (isinstance(self.fps, (int, float, np.integer, np.floating))
                                              and np.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"LMConfig.fps: expected a positive frame rate, got {self.fps!r}")
        self.fps = float(self.fps)
        if self.lora_targets is not None:
            self.lora_targets = tuple(self.lora_targets)


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

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each transformer layer's activations in backward instead of keeping them
        (transformers' gradient checkpointing, non-reentrant): saved activations shrink to about one
        layer's plus the layer inputs, for ~1/3 more compute. Same gradients (tested)."""
        base = self._base()
        if not getattr(base, "supports_gradient_checkpointing", False):
            raise ValueError(f"grad_checkpointing: expected a backbone that supports gradient checkpointing, got "
                             f"{type(base).__name__}")
        kw = {"use_reentrant": False}
        if hasattr(base, "activation_checkpointing_enable"):   # transformers >= 5.25's name
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)

    def compile_transformer(self, **kw) -> None:
        """``torch.compile`` (``kw``: its options) the transformer that every forward runs
        (:meth:`hidden_states`), in place: parameter names, and so checkpoints, stay the same."""
        self._decoder().compile(**kw)

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

    def history_ids(self, history_words: list[Word]) -> list[int]:
        """``[<bos>] + W^h`` ids of ``history_words`` (the most recent whole words within
        ``config.history_tokens``)."""
        words = [self.word_ids(w.text) for w in sorted(history_words, key=lambda w: w.end)]
        return tokens.history_ids(self.vocab, words, self.config.history_tokens)

    def speaker_steps(self, seg: Segment, n_steps: int | None = None) -> tuple[list[int], list[list[int]]]:
        """``(history, steps)``: ``history = [<bos>] + W^h`` ids; ``steps[i]`` = ids of step i's
        words, ``<sa> ... </sa>`` and ``<emo> e </emo>`` (enabled modalities), ``i < n_steps``
        (default ``T // r``). Rules: :mod:`minilisten.tokens`."""
        v = self.vocab
        st = tokens.speaker_tokens(seg, self.modalities, n_steps, self.config.r, self.word_placement, v.n_sa)
        history = self.history_ids(st.history)
        steps = [tokens.step_ids(v, None if st.words is None else [self.word_ids(w.text) for w in st.words[i]],
                                 None if st.sa is None else st.sa[i], None if st.emo is None else st.emo[i])
                 for i in range(st.n_steps)]
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

    # -- context policy (tokens.context_plan / context_ids with this model's config)
    def context_plan(self, history: list[int], steps: list[list[int]], with_lr: bool = True,
                     max_len: int | None = None) -> list[int]:
        """Start step ``j_i`` of the context of each step ``i`` (:func:`minilisten.tokens.context_plan`;
        ``max_len`` defaults to the model's)."""
        return tokens.context_plan(self.vocab, history, steps, max_len or self.max_len, self.config.history_tokens,
                                   self.config.window_keep, with_lr)

    def context_ids(self, history: list[int], steps: list[list[int]], codes, i: int, j: int) -> list[int]:
        """``[<bos>] + H_j + steps[j] + [LR_j] + ... + steps[i]`` (:func:`minilisten.tokens.context_ids`)."""
        return tokens.context_ids(self.vocab, history, steps, codes, i, j, self.config.history_tokens)

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
        plan = self.context_plan(history, steps, with_lr=codes is not None)
        return tokens.pack_sequences(self.vocab, history, steps, codes, plan, self.config.history_tokens)

    def build_sequence(self, seg: Segment, lr_codes=None, n_steps: int | None = None) -> LMSequence:
        """As :meth:`build_sequences` for a clip that fits the context (raises otherwise)."""
        seqs = self.build_sequences(seg, lr_codes, n_steps)
        if len(seqs) > 1:
            raise ValueError(f"segment {seg.name!r}: the sequence exceeds the context of {self.max_len} tokens; use "
                             "build_sequences (sliding windows with history) or shorter windows")
        return seqs[0]

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

    def noise_lr_inputs(self, input_ids: torch.Tensor, fraction: float, rng: torch.Generator | None = None):
        """LM-listener's robustness trick: each input LR token is replaced, with probability
        ``fraction``, by a uniformly random LR token (targets are unchanged)."""
        if fraction <= 0:
            return input_ids
        v = self.vocab
        is_lr = (input_ids >= v.lr_offset) & (input_ids < v.sa_offset)
        u = torch.rand(input_ids.shape, generator=rng).to(input_ids.device)
        rnd = torch.randint(0, v.n_lr, input_ids.shape, generator=rng).to(input_ids.device) + v.lr_offset
        return torch.where(is_lr & (u < fraction), rnd, input_ids)

    def loss(self, batch: dict[str, torch.Tensor], stage: int, lr_noise: float = 0.0,
             rng: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Mean cross-entropy over the positions with a target (stage 1: LM head over the whole
        vocabulary; stage 2: LR head). Returns ``(loss, {"correct", "count"})``."""
        dev = self.device
        ids = batch["input_ids"].to(dev)
        if stage == 2 and lr_noise > 0:
            ids = self.noise_lr_inputs(ids, lr_noise, rng)
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

    def merged_backbone(self):
        """A plain transformers model with LoRA (and trainable-token deltas) merged in; the
        backbone itself when LoRA is off. For fast decoders that read HF weights."""
        if not self.config.lora:
            return self.backbone
        return copy.deepcopy(self.backbone).merge_and_unload()

    # -- persistence
    def save_pretrained(self, directory) -> None:
        """``config.json`` + ``model.safetensors`` + ``tokenizer/``: file by file (each atomic,
        ``config.json`` last) into a plain directory, as one transaction into a managed one
        (:mod:`minilisten.checkpoint`)."""
        from .checkpoint import atomic_save_tensors, atomic_write_text, checkpoint_transaction, is_managed
        d = Path(directory)
        if is_managed(d):
            with checkpoint_transaction(d) as stage:
                self.save_pretrained(stage)
            return
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
        """Everything needed for inference from a :meth:`save_pretrained` directory. Files are read
        through :mod:`minilisten.checkpoint` (a managed set is verified; a missing, corrupt or
        mismatched file raises naming it). Configs saved before ``LMConfig.fps`` existed load as 30 fps."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from .checkpoint import load_checkpoint, verify_checkpoint
        d = Path(directory)
        cfg, sd = load_checkpoint(d)
        cfg_path = d / "config.json"
        if cfg.get("format") != FORMAT:
            raise ValueError(f"{str(d)!r}: expected a {FORMAT} checkpoint, got format {cfg.get('format')!r} ({cfg_path})")
        if not (d / "tokenizer").is_dir():
            raise FileNotFoundError(f"ListenerLM checkpoint {str(d)!r}: missing tokenizer ({d / 'tokenizer'})")
        verify_checkpoint(d, names=("tokenizer",))
        try:
            tok = AutoTokenizer.from_pretrained(str(d / "tokenizer"))
            vocab = Vocab(**cfg["vocab"])
            known = {f for f in LMConfig.__dataclass_fields__}
            unknown = sorted(set(cfg["lm"]) - known)
            if unknown:
                raise ValueError(f"unknown LMConfig fields {unknown}")
            lm_cfg = LMConfig(**cfg["lm"])
            bc = dict(cfg["backbone_config"])
            bconf = AutoConfig.for_model(bc.pop("model_type"), **bc)
            tok_len = cfg["tokenizer_len"]
        except (KeyError, TypeError, ValueError, OSError) as e:
            what = f"missing field {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
            raise ValueError(f"ListenerLM config ({cfg_path}): expected a {FORMAT} config with lm, vocab, "
                             f"tokenizer_len and backbone_config, got {what}") from e
        if len(tok) != tok_len or len(tok) > vocab.n_words:
            raise ValueError(f"{str(d)!r}: the tokenizer has {len(tok)} tokens but the checkpoint's vocabulary was built "
                             f"for {tok_len} (word block {vocab.n_words}); tokenizer and weights do not match")
        if bconf.get_text_config().vocab_size != vocab.size:
            raise ValueError(f"{str(d)!r}: backbone vocab_size {bconf.get_text_config().vocab_size} != vocabulary size "
                             f"{vocab.size} ({cfg_path})")
        backbone = AutoModelForCausalLM.from_config(bconf)
        model = cls(backbone, tok, lm_cfg, vocab=vocab)
        own = model.state_dict()
        missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        bad = [k for k in sd if k in own and sd[k].shape != own[k].shape]
        if missing or unexpected or bad:
            raise ValueError(f"ListenerLM weights ({d / 'model.safetensors'}): expected the tensors of config.json's "
                             f"model, got missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {bad[:5]}")
        model.load_state_dict(sd, strict=False)
        return model.to(map_location)
