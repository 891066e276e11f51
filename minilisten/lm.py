"""The multimodal listener LM (paper §3.1): any HF causal LM + E_MM embeddings + an affine LR head, its
losses (stage 1, Eq. 3: next speaker token; stage 2, Eq. 4: the LR head) and checkpoints. Token layout and
sequences: :mod:`minilisten.tokens`; decoding: :mod:`minilisten.generate`; notes: docs/models.md.
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import tokens
from .data.segment import N_EMOTIONS, Segment, Word, _positive
from .errors import UserError
from .tokens import IGNORE, MODALITIES, PLACEMENTS, LMSequence, Vocab, check_modalities

FORMAT = "minilisten.ListenerLM"


@dataclass
class LMConfig:
    """The listener LM's options. ``r`` is the codes' VQ-VAE's ``rate`` (recorded so a checkpoint decodes
    without it); ``fps`` the training data's frame rate (streams at another rate are refused)."""
    modalities: tuple[str, ...] = MODALITIES  # subset of ("W", "SA", "emo"); words-only = LM-listener
    n_lr: int = 256                  # V_LR: VQ-VAE codebook size
    n_sa: int = 1024                 # V_SA: SpeechTokenizer codebook size (0: no SA block, e.g. words-only data)
    n_emo: int = N_EMOTIONS          # V_emo: EMOCA classes (0: no emo block)
    r: int = 8                       # frames per LR token = VQConfig.rate of the codes' VQ-VAE (see above)
    fps: float = 30.0                # motion frame rate the model is trained at
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
                raise UserError(f"LMConfig.{what}: modality {m!r} needs a vocabulary of >= 1 token, got {n!r}")
        if self.word_placement not in PLACEMENTS:
            raise UserError(f"LMConfig.word_placement: expected one of {PLACEMENTS}, got {self.word_placement!r}")
        if not 0 < self.window_keep <= 1:
            raise UserError(f"LMConfig.window_keep: expected a value in (0, 1], got {self.window_keep}")
        if isinstance(self.r, bool) or not (isinstance(self.r, (int, np.integer)) and self.r >= 1):
            raise UserError(f"LMConfig.r: expected an int >= 1 (frames per LR token), got {self.r!r}")
        self.fps = _positive("LMConfig.fps", self.fps)
        if self.lora_targets is not None:
            self.lora_targets = tuple(self.lora_targets)


def load_backbone(name_or_path: str):
    """``(model, tokenizer)`` of a transformers causal LM from a local directory or a hub name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise OSError(f"backbone {name_or_path!r}: could not load a causal LM + tokenizer as a local directory or a "
                      f"hub name ({e}); offline, save_pretrained it elsewhere and pass the directory") from e
    return model, tok


def train_word_tokenizer(texts, vocab_size: int = 1024):
    """A byte-level BPE transformers fast tokenizer trained on words (each with a leading space, as GPT-2)."""
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
    """A randomly initialised causal LM of layout ``arch`` (``DEFAULT_ARCHS``)."""
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
    raise UserError(f"arch: expected one of {DEFAULT_ARCHS}, got {arch!r}")


def default_backbone(texts, n_layer: int = 2, n_embd: int = 128, n_head: int = 4, n_positions: int = 1024,
                     vocab_size: int = 1024, seed: int = 0, arch: str = "llama"):
    """``(model, tokenizer)``: a small causal LM from scratch (LLaMA layout by default: rotary positions
    learn the interleaved sequences faster, docs/results.md) + a BPE tokenizer trained on ``texts``."""
    tok = train_word_tokenizer(texts, vocab_size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = scratch_backbone(arch, len(tok), n_layer, n_embd, n_head, n_positions, tok.bos_token_id,
                                 tok.eos_token_id)
    return model, tok


class ListenerLM(nn.Module):
    """A causal LM over interleaved speaker/listener tokens: ``backbone`` (a transformers causal LM,
    wrapped by peft when ``config.lora``) with embeddings resized to ``vocab.size`` (word rows unchanged)
    and ``lr_head = nn.Linear(hidden, n_lr)``."""

    def __init__(self, backbone, tokenizer, config: LMConfig | None = None, vocab: Vocab | None = None):
        super().__init__()
        self.config = config = config or LMConfig()
        self.tokenizer = tokenizer
        rows = backbone.get_input_embeddings().weight.shape[0]
        if vocab is None:  # fresh: extend the word vocabulary with E_MM
            if len(tokenizer) > rows:
                raise UserError(f"backbone: expected >= {len(tokenizer)} embedding rows (the tokenizer's tokens), "
                                f"got {rows}")
            vocab = Vocab(rows, config.n_lr, config.n_sa, config.n_emo)
            backbone.resize_token_embeddings(vocab.size)
        else:
            want = (config.n_lr, config.n_sa, config.n_emo, vocab.size, vocab.n_words)
            got = (vocab.n_lr, vocab.n_sa, vocab.n_emo, rows, max(len(tokenizer), vocab.n_words))
            if want != got:
                raise UserError(f"vocab: expected n_lr, n_sa, n_emo of the config, the backbone's embedding rows and a "
                                f"tokenizer within the word block = {want}, got {got}")
        self.vocab = vocab
        self.max_len = config.max_len or getattr(backbone.config.get_text_config(), "max_position_embeddings", 0)
        if not self.max_len:   # GPT-2's n_positions is max_position_embeddings through its attribute_map
            raise UserError(f"backbone config {type(backbone.config).__name__}: expected max_position_embeddings, "
                            "got none; set LMConfig.max_len")
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
        tti = {names[id(emb)].split(".")[-1]: new}
        if out is not None and out.weight is not emb.weight:   # untied output rows are trained too
            tti[names[id(out)].split(".")[-1]] = new
        lcfg = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                          target_modules=list(c.lora_targets) if c.lora_targets else None, trainable_token_indices=tti)
        return get_peft_model(backbone, lcfg)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each layer's activations in backward (transformers', non-reentrant): less memory,
        ~1/3 more compute, same gradients."""
        base = self._base()
        if not getattr(base, "supports_gradient_checkpointing", False):
            raise UserError(f"grad_checkpointing: expected a backbone that supports gradient checkpointing, got "
                            f"{type(base).__name__}")
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def compile_transformer(self, **kw) -> None:
        """``torch.compile`` the transformer of every forward in place (parameter names stay)."""
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

    def word_ids(self, text: str) -> list[int]:
        """Token ids of one word (GPT-2 style: with a leading space), cached."""
        ids = self._word_cache.get(text)
        if ids is None:
            t = text.strip()
            ids = self.tokenizer.encode((" " + t) if self._space_prefix else t, add_special_tokens=False)
            if any(not 0 <= i < self.vocab.n_words for i in ids):
                raise UserError(f"word {text!r}: expected token ids in the word block [0, {self.vocab.n_words}), "
                                f"got {ids}")
            self._word_cache[text] = ids
        return ids

    def history_ids(self, history_words: list[Word]) -> list[int]:
        """``[<bos>] + W^h`` ids: the most recent whole words within ``config.history_tokens``."""
        words = [self.word_ids(w.text) for w in sorted(history_words, key=lambda w: w.end)]
        return tokens.history_ids(self.vocab, words, self.config.history_tokens)

    def speaker_steps(self, seg: Segment, n_steps: int | None = None) -> tuple[list[int], list[list[int]]]:
        """``(history, steps)``: ``[<bos>] + W^h`` ids and, per step ``i < n_steps`` (default ``T // r``), the ids
        of its words, ``<sa> ... </sa>`` and ``<emo> e </emo>`` (:func:`minilisten.tokens.speaker_tokens`)."""
        v = self.vocab
        st = tokens.speaker_tokens(seg, self.modalities, n_steps, self.config.r, self.word_placement, v.n_sa)
        history = self.history_ids(st.history)
        steps = [tokens.step_ids(v, None if st.words is None else [self.word_ids(w.text) for w in st.words[i]],
                                 None if st.sa is None else st.sa[i], None if st.emo is None else st.emo[i])
                 for i in range(st.n_steps)]
        return history, steps

    def _check_codes(self, seg: Segment, lr_codes) -> np.ndarray:
        c = np.asarray(lr_codes.detach().cpu() if torch.is_tensor(lr_codes) else lr_codes)
        if c.ndim != 1 or not np.issubdtype(c.dtype, np.integer) or c.size > seg.T // self.config.r:
            raise UserError(f"lr_codes: expected at most T // r = {seg.T // self.config.r} integer codes (1-D) for "
                            f"segment {seg.name!r}, got shape {c.shape} dtype {c.dtype}")
        return self.vocab.lr(c) - self.vocab.lr_offset   # checks the range [0, n_lr)

    def context_plan(self, history: list[int], steps: list[list[int]], with_lr: bool = True,
                     max_len: int | None = None) -> list[int]:
        """Start step of each step's context (:func:`minilisten.tokens.context_plan` with this config)."""
        return tokens.context_plan(self.vocab, history, steps, max_len or self.max_len, self.config.history_tokens,
                                   self.config.window_keep, with_lr)

    def context_ids(self, history: list[int], steps: list[list[int]], codes, i: int, j: int) -> list[int]:
        """``[<bos>] + H_j + steps[j] + [LR_j] + ... + steps[i]`` (:func:`minilisten.tokens.context_ids`)."""
        return tokens.context_ids(self.vocab, history, steps, codes, i, j, self.config.history_tokens)

    def build_sequences(self, seg: Segment, lr_codes=None, n_steps: int | None = None) -> list[LMSequence]:
        """S (Eq. 1, stage 2) with ``lr_codes (n,)``, else S' (Eq. 2, stage 1) over ``n_steps`` (default
        ``T // r``) steps: one sequence per context chunk of the sliding policy."""
        codes = None
        if lr_codes is not None:
            codes = self._check_codes(seg, lr_codes)
            if n_steps is not None and n_steps != codes.size:
                raise UserError(f"n_steps: expected len(lr_codes) = {codes.size}, got {n_steps}")
            n_steps = codes.size
        history, steps = self.speaker_steps(seg, n_steps)
        if not steps:
            raise UserError(f"segment {seg.name!r}: T={seg.T} frames holds no LR step of r={self.config.r} frames")
        plan = self.context_plan(history, steps, with_lr=codes is not None)
        return tokens.pack_sequences(self.vocab, history, steps, codes, plan, self.config.history_tokens)

    def lr_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L, n_lr)`` LR-head logits at every position (HF forward, no cache)."""
        out = self._decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return self.lr_head(out.last_hidden_state)

    forward = lr_logits

    def noise_lr_inputs(self, input_ids: torch.Tensor, fraction: float, rng: torch.Generator | None = None):
        """LM-listener's robustness trick: each input LR token becomes a uniformly random one with
        probability ``fraction`` (targets unchanged)."""
        if fraction <= 0:
            return input_ids
        v = self.vocab
        is_lr = (input_ids >= v.lr_offset) & (input_ids < v.sa_offset)
        u = torch.rand(input_ids.shape, generator=rng).to(input_ids.device)
        rnd = torch.randint(0, v.n_lr, input_ids.shape, generator=rng).to(input_ids.device) + v.lr_offset
        return torch.where(is_lr & (u < fraction), rnd, input_ids)

    def loss(self, batch: dict[str, torch.Tensor], stage: int, lr_noise: float = 0.0,
             rng: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Mean cross-entropy where there is a target (stage 1: the LM head over the whole vocabulary,
        stage 2: the LR head): ``(loss, {"correct", "count"})``."""
        dev = self.device
        ids = batch["input_ids"].to(dev)
        if stage == 2 and lr_noise > 0:
            ids = self.noise_lr_inputs(ids, lr_noise, rng)
        tgt = batch["targets"].to(dev)
        # right padding + causal attention: no mask needed, so SDPA takes its fused causal path
        h = self._decoder()(input_ids=ids, use_cache=False).last_hidden_state
        sel = tgt != IGNORE
        hs, ts = h[sel], tgt[sel]
        if stage == 2:
            logits = self.lr_head(hs)
        elif stage == 1:
            logits = self._base().get_output_embeddings()(hs)
        else:
            raise UserError(f"stage: expected 1 or 2, got {stage!r}")
        loss = F.cross_entropy(logits.float(), ts)
        with torch.no_grad():
            correct = (logits.argmax(-1) == ts).sum()
        return loss, {"correct": int(correct), "count": int(ts.numel())}

    def merged_backbone(self):
        """The backbone with LoRA (and trainable-token deltas) merged in, for decoders that read HF weights."""
        if not self.config.lora:
            return self.backbone
        return copy.deepcopy(self.backbone).merge_and_unload()

    def save_pretrained(self, directory) -> None:
        """``config.json`` + ``model.safetensors`` + ``tokenizer/``: each file atomic, ``config.json`` last (one
        transaction into a managed directory, :mod:`minilisten.checkpoint`)."""
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
        with tempfile.TemporaryDirectory(dir=d, prefix=".tokenizer.", ignore_cleanup_errors=True) as tmp:
            self.tokenizer.save_pretrained(tmp)
            (d / "tokenizer").mkdir(exist_ok=True)
            for f in Path(tmp).iterdir():
                os.replace(f, d / "tokenizer" / f.name)
        atomic_write_text(d / "config.json", json.dumps(cfg, indent=2, sort_keys=True, default=str))

    @classmethod
    def from_pretrained(cls, directory, map_location: str | torch.device = "cpu") -> "ListenerLM":
        """A :meth:`save_pretrained` directory, read through :mod:`minilisten.checkpoint`; a missing, corrupt
        or mismatched file raises naming it."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from .checkpoint import load_checkpoint, verify_checkpoint
        d = Path(directory)
        cfg, sd = load_checkpoint(d)
        where = f"ListenerLM config ({d / 'config.json'})"
        if cfg.get("format") != FORMAT:
            raise UserError(f"{where}: expected a {FORMAT} checkpoint, got format {cfg.get('format')!r}")
        missing = [k for k in ("lm", "vocab", "tokenizer_len", "backbone_config") if k not in cfg]
        unknown = sorted(set(cfg.get("lm", {})) - {f.name for f in fields(LMConfig)})
        if missing or unknown:
            raise UserError(f"{where}: expected lm, vocab, tokenizer_len and backbone_config with LMConfig's fields, "
                            f"got missing fields {missing}, unknown LMConfig fields {unknown}")
        if not (d / "tokenizer").is_dir():
            raise UserError(f"ListenerLM checkpoint {str(d)!r}: expected a tokenizer directory, got none")
        verify_checkpoint(d, names=("tokenizer",))
        tok = AutoTokenizer.from_pretrained(str(d / "tokenizer"))
        if len(tok) != cfg["tokenizer_len"]:
            raise UserError(f"{str(d)!r}: the tokenizer has {len(tok)} tokens but the checkpoint's vocabulary was "
                            f"built for {cfg['tokenizer_len']}; they do not match")
        bc = dict(cfg["backbone_config"])
        backbone = AutoModelForCausalLM.from_config(AutoConfig.for_model(bc.pop("model_type"), **bc))
        model = cls(backbone, tok, LMConfig(**cfg["lm"]), vocab=Vocab(**cfg["vocab"]))
        own = model.state_dict()
        missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        bad = [k for k in sd if k in own and sd[k].shape != own[k].shape]
        if missing or unexpected or bad:
            raise UserError(f"ListenerLM weights ({d / 'model.safetensors'}): expected the tensors of config.json's "
                            f"model, got missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {bad[:5]}")
        model.load_state_dict(sd, strict=False)
        return model.to(map_location)
