"""Issue 13's open question, made reproducible: on a world that minilisten's generator did not write,
does the identity-disentangled VQ-VAE (IN encoder, AdaIN decoder on beta) beat the naive one, for
ours and for an independent reference implementation alike, and does slow drift explain a tie?

    OMP_NUM_THREADS=1 python bench/foreign_vq.py --seeds 0 1 --drift 0 1 --out bench/results/foreign_vq.json

Per (drift, seed):
1. :func:`foreign_world` writes a corpus in LM-listener's on-disk layout (``segments_{train,val,
   test}.pth``, ``mean.npy``, ``std.npy``) from a generator that shares no code with
   ``minilisten.data.synthetic``: 5 listeners whose shape vectors differ, 52 training segments of
   32 s (~28 min), words only. Listener motion = per-person habits (a resting offset that is a
   fixed linear map of the person's beta, a per-dimension gain, a nodding tempo) applied to slow
   drift (Ornstein-Uhlenbeck, time constants 3-4 s, shared by nobody: drawn per segment, scaled
   by ``drift``; one path per dimension, or ``--drift-rank k`` paths mixed into all 56) plus nods
   and smiles after the speaker's pauses, plus noise.
2. ours, through the CLI as a user runs it: ``python -m minilisten train-vq --data DIR --preset
   naive|disentangled --steps S`` (the presets' defaults otherwise);
3. the reference (:class:`RefVQ`, ~100 lines, written from the issue's description: Conv1D, width
   128, 3 residual blocks per side, stride 8, K = 128 codes of d = 64, EMA codebook, AdaIN = a
   Linear map of beta to the scale and shift of instance-normalised features; 240-frame windows,
   batch 32, Adam 1e-3, ``--ref-steps``), with and without IN/AdaIN;
4. Rec = ``metrics.vq_rec`` on the validation split's 240-frame windows (``train_vq.eval_windows``;
   for ours ``train_vq.evaluate_vq``, Table 5's number, which computes exactly that).
Prints a table (mean and range over seeds) and writes the JSON. ``--data DIR`` runs steps 2-4 on a
dataset of your own instead (for example the one issue 13 was measured on).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # a source checkout without install
from minilisten.data import Segment, Word, load_dataset  # noqa: E402
from minilisten.data.formats import Corpus, save_lm_listener  # noqa: E402
from minilisten.metrics import vq_rec  # noqa: E402
from minilisten.train_vq import eval_windows, evaluate_vq  # noqa: E402

FPS, D, WORDS = 30, 56, ["yeah", "so", "and", "right", "I", "think", "it", "was", "really", "the", "then", "okay"]


# ----------------------------------------------------------------------------- the world
def _ou(rng, T: int, dims: int, tau_s: np.ndarray, sd: float) -> np.ndarray:
    """Stationary Ornstein-Uhlenbeck paths (T, dims) with per-dimension time constants (s)."""
    a = np.exp(-1.0 / (tau_s * FPS))
    x = np.zeros((T, dims))
    x[0] = rng.normal(0, sd, dims)
    e = rng.normal(0, 1, (T, dims)) * sd * np.sqrt(1 - a ** 2)
    for t in range(1, T):
        x[t] = a * x[t - 1] + e[t]
    return x


def _speaker(rng, T: int):
    """Talk spurts (1-4 s) of words every ~0.3 s, pauses of 0.3-1.5 s -> words, pause onsets (s), motion."""
    words, pauses, t = [], [], float(rng.uniform(0, 0.5))
    while t < T / FPS - 0.5:
        end = min(t + rng.uniform(1, 4), T / FPS - 0.2)
        while t < end:
            d = rng.uniform(0.12, 0.35)
            words.append(Word(str(rng.choice(WORDS)), t, min(t + d, T / FPS)))
            t += d + rng.uniform(0.02, 0.1)
        pauses.append(t)
        t += rng.uniform(0.3, 1.5)
    motion = _ou(rng, T, D, np.full(D, 1.0), 0.1)
    for w in words:   # the jaw opens while speaking
        motion[int(w.start * FPS):int(w.end * FPS), 53] += 0.15
    return words, pauses, motion.astype(np.float32)


def foreign_world(seed: int, drift: float = 1.0, n_listeners: int = 5, n_segments: tuple = (52, 10, 10),
                  seconds: float = 32.0, drift_rank: int = 0) -> Corpus:
    """The corpus described in the module docstring (train / val / test segment counts ``n_segments``).
    ``drift_rank``: 0 = an independent drift per motion dimension (rank 56); k > 0 = k drift paths
    mixed into the 56 dimensions by a fixed random map (the same per-dimension scale)."""
    rng = np.random.default_rng(1000 + seed)
    mix = rng.normal(0, 1, (drift_rank, D)) / np.sqrt(drift_rank) if drift_rank else None
    T = int(seconds * FPS)
    habit_map = rng.normal(0, 0.25, (D, 12))                       # beta[:12] -> resting offset (56,)
    people = []
    for p in range(n_listeners):
        beta = rng.normal(0, 1, 100).astype(np.float32)
        people.append(dict(beta=beta, offset=habit_map @ beta[:12], gain=np.exp(rng.normal(0, 0.35, D)),
                           nod_hz=rng.uniform(0.8, 1.8), nod_amp=rng.uniform(0.04, 0.1), name=f"p{p}"))
    splits = []
    for n in n_segments:
        segs = []
        for i in range(n):
            who = people[(i + len(splits)) % n_listeners]
            words, pauses, spk = _speaker(rng, T)
            k = drift_rank or D
            x = drift * _ou(rng, T, k, rng.uniform(3, 4, k), 0.3)     # slow drift, nobody's habit
            x = x @ mix if mix is not None else x
            t = np.arange(T) / FPS
            for p0 in pauses:                                          # nod + smile 0.3-0.6 s after a pause
                on = p0 + rng.uniform(0.3, 0.6)
                k = (t >= on) & (t < on + 1.2)
                x[k, 50] += who["nod_amp"] * np.sin(2 * np.pi * who["nod_hz"] * (t[k] - on))
                x[k, 0:3] += 0.2 * np.exp(-(t[k] - on))[:, None]
            lis = who["offset"] + who["gain"] * x + rng.normal(0, 0.01, (T, D))
            segs.append(Segment(spk, lis.astype(np.float32), FPS, listener_beta=who["beta"], words=words,
                                listener_id=who["name"], name=f"{len(splits)}_{i}"))
        splits.append(segs)
    return Corpus(*splits, fps=float(FPS))


# ----------------------------------------------------------------------------- the reference VQ-VAE
class _Res(nn.Module):
    def __init__(self, w: int, adain: bool):
        super().__init__()
        self.adain, self.c1, self.c2 = adain, nn.Conv1d(w, w, 3, padding=1), nn.Conv1d(w, w, 3, padding=1)
        self.ss = nn.Linear(100, 4 * w) if adain else None

    def _n(self, h, s):
        if not self.adain:
            return h
        sc, sh = s
        return F.instance_norm(h) * (1 + sc[..., None]) + sh[..., None]

    def forward(self, h, beta=None):
        s = self.ss(beta).chunk(4, -1) if self.adain else [None] * 4
        y = self.c1(F.relu(self._n(h, s[0:2])))
        return h + self.c2(F.relu(self._n(y, s[2:4])))


class RefVQ(nn.Module):
    """Conv1D VQ-VAE, stride 8: (B, T, 56) (+ beta (B, 100)) -> reconstruction. ``disentangled``:
    instance norm in the encoder, AdaIN from beta in the decoder; otherwise neither."""

    def __init__(self, disentangled: bool, width: int = 128, K: int = 128, d: int = 64):
        super().__init__()
        self.dis, w = disentangled, width
        self.inp, self.enc = nn.Conv1d(D, w, 3, padding=1), nn.ModuleList()
        for _ in range(3):
            self.enc.append(nn.ModuleList([nn.Conv1d(w, w, 4, 2, 1), _Res(w, False)]))
        self.to_z, self.from_z = nn.Conv1d(w, d, 1), nn.Conv1d(d, w, 3, padding=1)
        self.dec = nn.ModuleList(nn.ModuleList([_Res(w, disentangled), nn.ConvTranspose1d(w, w, 4, 2, 1)])
                                 for _ in range(3))
        self.out = nn.Conv1d(w, D, 3, padding=1)
        self.register_buffer("codes", torch.randn(K, d) * 0.1)
        self.register_buffer("ema_n", torch.ones(K))
        self.register_buffer("ema_s", self.codes.clone())
        self.register_buffer("mean", torch.zeros(D))
        self.register_buffer("std", torch.ones(D))

    def forward(self, x, beta):
        h = self.inp(((x - self.mean) / self.std).transpose(1, 2))
        for down, res in self.enc:
            h = res(F.relu(down(h)))
            h = F.instance_norm(h) if self.dis else h
        z = self.to_z(h).transpose(1, 2)                                   # (B, L, d)
        flat = z.reshape(-1, z.shape[-1])
        idx = torch.cdist(flat, self.codes).argmin(1)
        zq = self.codes[idx].view_as(z)
        if self.training:   # EMA codebook, dead codes restarted from the batch
            with torch.no_grad():
                one = F.one_hot(idx, len(self.codes)).float()
                self.ema_n.mul_(0.99).add_(one.sum(0), alpha=0.01)
                self.ema_s.mul_(0.99).add_(one.t() @ flat, alpha=0.01)
                self.codes.copy_(self.ema_s / self.ema_n.clamp_min(1e-5)[:, None])
                dead = self.ema_n < 1e-3
                if dead.any():
                    self.codes[dead] = flat[torch.randint(0, len(flat), (int(dead.sum()),))]
                    self.ema_n[dead], self.ema_s[dead] = 1.0, self.codes[dead]
        commit = F.mse_loss(z, zq.detach())
        h = self.from_z((z + (zq - z).detach()).transpose(1, 2))
        for res, up in self.dec:
            h = F.relu(up(res(h, beta)))
        return self.out(h).transpose(1, 2) * self.std + self.mean, commit


def train_ref(train: list[Segment], disentangled: bool, steps: int, seed: int, window: int = 240,
              batch: int = 32) -> RefVQ:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    m = RefVQ(disentangled)
    allm = np.concatenate([s.listener_motion for s in train])
    m.mean.copy_(torch.from_numpy(allm.mean(0)))
    m.std.copy_(torch.from_numpy(allm.std(0) + 1e-4))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    for step in range(steps):
        segs = [train[j] for j in rng.integers(0, len(train), batch)]
        t0 = [int(rng.integers(0, s.T - window + 1)) for s in segs]
        x = torch.from_numpy(np.stack([s.listener_motion[a:a + window] for s, a in zip(segs, t0)]))
        b = torch.from_numpy(np.stack([s.listener_beta for s in segs]))
        rec, commit = m(x, b)
        loss = F.mse_loss((rec - m.mean) / m.std, (x - m.mean) / m.std) + 0.25 * commit
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


# ----------------------------------------------------------------------------- the comparison
def rec_of(fn, val: list[Segment]) -> float:
    """Rec (metrics.vq_rec) of ``fn(motion (N, 240, 56), beta (N, 100)) -> recon`` on val's windows."""
    mot, beta = eval_windows(val, 240, True)
    with torch.no_grad():
        return float(vq_rec(fn(mot, beta), mot))


def ours(data_dir: Path, preset: str, steps: int, seed: int, out: Path) -> float:
    from minilisten.vqvae import VQVAE
    cmd = [sys.executable, "-m", "minilisten", "train-vq", "--data", str(data_dir), "--preset", preset,
           "--steps", str(steps), "--seed", str(seed), "--out", str(out), "--no-progress", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return evaluate_vq(VQVAE.from_pretrained(out), load_dataset(data_dir, progress=False).val)["rec"]   # Table 5's Rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--drift", type=float, nargs="+", default=[0.0, 1.0], help="drift scales to compare")
    p.add_argument("--steps", type=int, default=1000, help="train-vq steps (ours)")
    p.add_argument("--ref-steps", type=int, default=1500, help="reference VQ-VAE steps")
    p.add_argument("--drift-rank", type=int, default=0, help="0: independent drift per dimension; k: k mixed paths")
    p.add_argument("--segments", type=int, nargs=3, default=[52, 10, 10], metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--data", default=None, help="a dataset directory (any layout the readers accept, with beta) "
                                                "instead of the generated world: the same four models on it")
    p.add_argument("--out", default=None, help="JSON results file")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rows, t0 = [], time.time()
    if a.data:
        a.drift = [None]   # one row per training seed on the given dataset
    for drift in a.drift:
        for seed in a.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                d = Path(a.data) if a.data else Path(tmp) / "world"
                if not a.data:
                    save_lm_listener(foreign_world(seed, drift, n_segments=tuple(a.segments),
                                                   drift_rank=a.drift_rank), d)
                corpus = load_dataset(d, progress=False)
                row = dict(drift=drift, drift_rank=a.drift_rank, seed=seed)
                for preset in ("naive", "disentangled"):
                    row[f"ours_{preset}"] = ours(d, preset, a.steps, seed, Path(tmp) / preset)
                for dis in (False, True):
                    ref = train_ref(corpus.train, dis, a.ref_steps, seed)
                    row[f"ref_{'disentangled' if dis else 'naive'}"] = rec_of(lambda m, b: ref(m, b)[0], corpus.val)
                row["rec_mean"] = rec_of(lambda m, b: m.mean(1, keepdim=True).expand_as(m), corpus.val)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nRec on the validation windows ({time.time() - t0:.0f} s; mean [min, max] over seeds {a.seeds})")
    print(f"{'drift':>5} | {'ours naive':>22} | {'ours IN/AdaIN':>22} | {'ref naive':>22} | {'ref IN/AdaIN':>22}")
    for drift in a.drift:
        rs = [r for r in rows if r["drift"] == drift]
        cell = lambda k: (lambda v: f"{np.mean(v):.4f} [{min(v):.4f}, {max(v):.4f}]")([r[k] for r in rs])
        print(f"{str(drift):>5} | " + " | ".join(f"{cell(k):>22}" for k in
                                            ("ours_naive", "ours_disentangled", "ref_naive", "ref_disentangled")))
    if a.out:
        Path(a.out).write_text(json.dumps(dict(command="python bench/foreign_vq.py " + " ".join(argv or sys.argv[1:]),
                                               date=time.strftime("%Y-%m-%d"), rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
