"""A Learning2Listen-layout directory written by the tests (CI-sized): data/<speaker>/{train,test}/
p{0,1}_{list_faces,speak_faces,speak_audio,speak_files}_clean_deca.npy, 64-frame rows, [video, _, frame]
strings per frame, mel (4 rows per frame). Reusable: ``write_l2l(DIR)`` then ``demo --data DIR --quick``."""
import numpy as np

ROW = 64
#: speaker -> split -> rows as (video, first frame), in file order. trevor/train has three contiguous rows
#: of vidA, one gap (vidA@300), and vidB's two contiguous rows stored apart; fallon is the p1-listener show.
LAYOUT = {
    "trevor": {"train": [("vidA", 0), ("vidA", 64), ("vidA", 128), ("vidB", 0), ("vidA", 300), ("vidB", 64)],
               "test": [("vidC", 0), ("vidC", 64)]},
    "fallon": {"train": [("vidD", 10), ("vidD", 74), ("vidD", 200)], "test": [("vidE", 0)]},
}


def write_l2l(root, layout=None, n_mels: int = 128, seed: int = 0, smooth: bool = True) -> dict:
    """Write ``layout`` (default :data:`LAYOUT`) under ``root/data``; returns ``{(speaker, split, p, kind):
    array}`` as written. Every array differs, so a wrong pairing is caught. ``smooth``: faces are slow
    sinusoids (learnable, like real motion) rather than white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(ROW)[None, :, None] / 30.0
    out = {}
    for speaker, splits in (layout or LAYOUT).items():
        for split, rows in splits.items():
            d = root / "data" / speaker / split
            d.mkdir(parents=True)
            n = len(rows)
            frames = np.array([f for _, f in rows])[:, None] + np.arange(ROW)[None]
            for p in (0, 1):
                for kind in ("list_faces", "speak_faces"):
                    if smooth:
                        hz, phase = rng.uniform(0.2, 1.5, (n, 1, 184)), rng.uniform(0, 6, (n, 1, 184))
                        a = 0.3 * np.sin(2 * np.pi * hz * (t + frames[:, :1, None] / 30.0) + phase)
                    else:
                        a = rng.standard_normal((n, ROW, 184))
                    out[speaker, split, p, kind] = a.astype(np.float32)
                out[speaker, split, p, "speak_audio"] = rng.standard_normal((n, 4 * ROW, n_mels)).astype(np.float32)
                vids = np.array([v for v, _ in rows])[:, None].repeat(ROW, 1)
                out[speaker, split, p, "speak_files"] = np.stack(
                    [vids, np.full((n, ROW), f"p{p}"), frames.astype(str)], -1)
                for kind in ("list_faces", "speak_faces", "speak_audio", "speak_files"):
                    np.save(d / f"p{p}_{kind}_clean_deca.npy", out[speaker, split, p, kind])
    return out
