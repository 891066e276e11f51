"""TEMPORARY: decode_codes/generate_motion until the stream helper adds them to generate.py (C2)."""
import numpy as np
import torch


def decode_codes(vq, codes: list[np.ndarray], clips, batch: int = 64) -> list[np.ndarray]:
    """LR codes ``(L,)`` per clip -> raw motion ``(T, 56)`` with the clip's listener beta."""
    out: list = [None] * len(clips)
    order = sorted(range(len(clips)), key=lambda i: len(codes[i]))
    dev = vq.codebook.device
    with torch.no_grad():
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            groups: dict[int, list[int]] = {}
            for i in idx:
                groups.setdefault(len(codes[i]), []).append(i)
            for L, ids in groups.items():
                c = torch.as_tensor(np.stack([codes[i] for i in ids]), dtype=torch.long, device=dev)
                beta = None
                if vq.needs_beta:
                    beta = torch.as_tensor(np.stack([clips[i].listener_beta for i in ids]), device=dev)
                m = vq.decode(c, beta).float().cpu().numpy()
                for i, mi in zip(ids, m):
                    out[i] = mi[:clips[i].T]
    return out


def generate_motion(lm, vq, clips, batch: int = 16) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Greedy LR codes for each clip (fast static-cache decoder) and their decoded motion."""
    from .generate import Generator
    gen = Generator(lm, batch=min(batch, len(clips)))
    codes = gen.generate_segments(clips)
    return codes, decode_codes(vq, codes, clips)


