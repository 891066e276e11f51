"""The listener LM: vocabulary layout, Eq. 1 / Eq. 2 sequences, loss masks, backbones (GPT-2,
LLaMA + LoRA) loaded by path, save/load, reference decoding, sliding context, training."""
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import emotion_probs as _probs

from minilisten.data.segment import Segment, Word
from minilisten.generate import generate_nocache
from minilisten.lm import ListenerLM, LMConfig, default_backbone, load_backbone, train_word_tokenizer
from minilisten.tokens import IGNORE, SPECIALS, Vocab, collate, prefix_ids

FPS = 30.0
WORDS = ["well", "hi", "there", "friend", "do", "you", "know", "what", "i", "mean", "so", "great"]


def hand_segment(T=24):
    """3 LR steps at 30 fps: step spans (end times) (0, .267], (.267, .533], (.533, .8]."""
    return Segment(
        speaker_motion=np.zeros((T, 56)), listener_motion=np.zeros((T, 56)), fps=FPS,
        words=[Word("hi", 0.0, 0.1), Word("there", 0.1, 8 / FPS),       # both end in step 0
               Word("friend", 0.3, 0.5)],                              # step 1
        history_words=[Word("well", -0.9, -0.5)],
        sa_tokens=np.arange(40) % 9,                                   # 0.8 s at 50/s: 13 + 13 + 14
        emotion=_probs(T, np.repeat([1, 2, 0], 8)), name="hand")


@pytest.fixture(scope="module")
def tok():
    return train_word_tokenizer(WORDS * 3, vocab_size=300)


def tiny_gpt2(tok, **lm):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    bb = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    return ListenerLM(bb, tok, LMConfig(**{"n_lr": 16, "n_sa": 32, **lm}))


@pytest.fixture(scope="module")
def model(tok):
    return tiny_gpt2(tok).eval()


def one(m, *args):
    """The one sequence of a clip that fits the context."""
    (seq,) = m.build_sequences(*args)
    return seq


# ----------------------------------------------------------------------------- vocabulary
def test_vocab_layout():
    v = Vocab(n_words=100, n_lr=16, n_sa=32, n_emo=8)
    assert (v.bos, v.pad, v.sa_start, v.sa_end, v.emo_start, v.emo_end) == (100, 101, 102, 103, 104, 105)
    assert (v.lr(0), v.lr(15), v.sa(0), v.sa(31), v.emo(0), v.emo(7)) == (106, 121, 122, 153, 154, 161)
    assert v.size == 162 and v.kind(v.lr(5)) == "LR" and v.kind(v.lr(0) - 1) == "</emo>"
    assert torch.equal(v.lr(torch.tensor([0, 3])), torch.tensor([106, 109]))
    assert v.kinds([5, 100, 102, 106, 122, 154, 105]) == ["W", "<bos>", "<sa>", "LR", "SA", "emo", "</emo>"]
    with pytest.raises(ValueError, match=r"LR code: expected a value in \[0, 16\), got 16"):
        v.lr(16)
    with pytest.raises(ValueError, match=r"SA codes: expected values in \[0, 32\), got 40"):
        v.sa(np.array([1, 40]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        v.kind(162)
    with pytest.raises(ValueError, match="n_lr"):
        Vocab(100, n_lr=0)


def test_embedding_extension_keeps_word_rows(tok):
    from transformers import GPT2Config, GPT2LMHeadModel
    bb = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2))
    before = bb.get_input_embeddings().weight.detach().clone()
    m = ListenerLM(bb, tok, LMConfig(n_lr=16, n_sa=32))
    after = m.backbone.get_input_embeddings().weight
    assert after.shape == (m.vocab.size, 32) and m.vocab.n_words == len(tok)
    assert torch.equal(after[:len(tok)], before)
    assert m.backbone.get_output_embeddings().weight.shape[0] == m.vocab.size
    assert tuple(m.lr_head.weight.shape) == (16, 32)
    assert m.vocab.size == len(tok) + len(SPECIALS) + 16 + 32 + 8


# ----------------------------------------------------------------------------- sequences
def test_interleaving_exact_tokens(model):
    v, w = model.vocab, model.word_ids
    seg = hand_segment()
    codes = np.array([3, 7, 11])
    sa = [list(range(0, 13)), list(range(13, 26)), list(range(26, 40))]
    sa = [[t % 9 for t in s] for s in sa]
    def sa_emo(i, e):
        return [v.sa_start] + [v.sa(t) for t in sa[i]] + [v.sa_end, v.emo_start, v.emo(e), v.emo_end]
    step = [w("hi") + w("there") + sa_emo(0, 1), w("friend") + sa_emo(1, 2), sa_emo(2, 0)]
    history = [v.bos] + w("well")
    h, steps = model.speaker_steps(seg)
    assert h == history and steps == step
    S = one(model, seg, codes)
    want = history + step[0] + [v.lr(3)] + step[1] + [v.lr(7)] + step[2] + [v.lr(11)]
    assert S.ids.tolist() == want and S.stage == 2 and S.n_prefix == len(history)
    S1 = one(model, seg)                         # S' (Eq. 2): no LR tokens
    assert S1.ids.tolist() == history + step[0] + step[1] + step[2] and S1.stage == 1
    kinds = v.kinds(S.ids)
    assert kinds[:len(history)] == ["<bos>", "W"] and kinds.count("LR") == 3 and kinds.count("emo") == 3
    assert kinds.count("SA") == 40 and kinds[-1] == "LR"
    # the LR token of step i comes after all speaker tokens of step i (Eq. 1 ordering)
    lr_pos = [i for i, k in enumerate(kinds) if k == "LR"]
    assert lr_pos[0] == len(history) + len(step[0]) and lr_pos[1] == lr_pos[0] + 1 + len(step[1])


def test_modality_ablations(tok):
    seg = hand_segment()
    v = None
    for mods, want in [("W", {"W"}), ("W+emo", {"W", "<emo>", "emo", "</emo>"}),
                       ("W+SA", {"W", "<sa>", "SA", "</sa>"}),
                       ("SA+emo", {"<sa>", "SA", "</sa>", "<emo>", "emo", "</emo>"})]:
        m = tiny_gpt2(tok, modalities=mods)
        v = m.vocab
        _, steps = m.speaker_steps(seg)
        assert set(v.kinds([t for s in steps for t in s])) == want, mods
    m = tiny_gpt2(tok, modalities="W")
    _, steps = m.speaker_steps(seg)
    assert steps == [m.word_ids("hi") + m.word_ids("there"), m.word_ids("friend"), []]
    assert one(m, seg, [1, 2, 3]).ids.tolist() == (
        [v.bos] + m.word_ids("well") + steps[0] + [v.lr(1)] + steps[1] + [v.lr(2)] + [v.lr(3)])


def test_word_placement_lm_listener(tok):
    m = tiny_gpt2(tok, modalities="W", word_placement="lm_listener")
    _, steps = m.speaker_steps(hand_segment())
    # "hi" (frame 3) -> before LR_1; "there" (frame 8) and "friend" (frame 15) -> before LR_2
    assert steps == [[], m.word_ids("hi"), m.word_ids("there") + m.word_ids("friend")]
    with pytest.raises(ValueError, match="word_placement"):
        LMConfig(word_placement="late")


def test_history_budget_keeps_recent_whole_words(tok):
    m = tiny_gpt2(tok, modalities="W", history_tokens=2)
    seg = hand_segment()
    seg = seg.replace(history_words=[Word("do", -2.5, -2.2), Word("you", -2.0, -1.8), Word("know", -1.0, -0.5)])
    assert all(len(m.word_ids(x)) == 1 for x in ("do", "you", "know"))
    h, _ = m.speaker_steps(seg)
    assert h == [m.vocab.bos] + m.word_ids("you") + m.word_ids("know")


def test_loss_masks(model):
    v = model.vocab
    seg = hand_segment()
    codes = np.array([3, 7, 11])
    S = one(model, seg, codes)
    pos = np.nonzero(S.loss_mask)[0]
    # stage 2 (Eq. 4): exactly the positions just before an LR token, target = its code
    assert np.array_equal(pos + 1, np.array([i for i, t in enumerate(S.ids) if v.kind(t) == "LR"]))
    assert S.targets[pos].tolist() == [3, 7, 11]
    S1 = one(model, seg)
    pos1 = np.nonzero(S1.loss_mask)[0]
    nxt = [v.kind(t) for t in S1.ids[pos1 + 1]]
    # stage 1 (Eq. 3): every W/SA/emo token of the steps is a target (not history, not markers)
    assert set(nxt) == {"W", "SA", "emo"}
    n_words = len(model.word_ids("hi") + model.word_ids("there") + model.word_ids("friend"))
    assert len(pos1) == n_words + 40 + 3                        # W of the steps + 40 SA + 3 emo
    assert np.array_equal(S1.targets[pos1], S1.ids[pos1 + 1])
    assert pos1.min() >= S1.n_prefix - 1 and not S1.loss_mask[:S1.n_prefix - 1].any()
    b = collate([S, S1], v.pad)
    assert b["input_ids"].shape == (2, len(S.ids)) and (b["targets"][1, len(S1.ids):] == IGNORE).all()
    assert b["attention_mask"].sum().item() == len(S.ids) + len(S1.ids)


def test_bad_inputs(model, tok):
    seg = hand_segment()
    with pytest.raises(ValueError, match=r"LR codes: expected values in \[0, 16\), got 16"):
        one(model, seg, [1, 16, 2])
    with pytest.raises(ValueError, match=r"LR codes: expected values in \[0, 16\), got -1"):
        one(model, seg, [1, -1, 2])
    with pytest.raises(ValueError, match=r"lr_codes: expected at most T // r = 3 integer codes.*got shape \(4,\)"):
        one(model, seg, [1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"integer codes \(1-D\).*dtype float64"):
        one(model, seg, np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        tiny_gpt2(tok, modalities="W+audio")
    bad = hand_segment()
    bad = bad.replace(sa_tokens=np.full(40, 32))      # outside the SA codebook (n_sa = 32)
    with pytest.raises(ValueError, match=r"sa_tokens: expected token ids in \[0, 32\).*got 32"):
        one(model, bad)
    bad = hand_segment()
    object.__setattr__(bad, "emotion", np.full((24, 7), 1 / 7))   # bypasses Segment's validation on purpose
    with pytest.raises(ValueError, match=r"emotion: expected per-frame probabilities of shape \(T, 8\).*got \(24, 7\)"):
        one(model, bad)
    object.__setattr__(bad, "emotion", np.full((24, 8), 0.2))     # bypasses Segment's validation on purpose
    with pytest.raises(ValueError, match="rows summing to 1"):
        one(model, bad)


# ----------------------------------------------------------------------------- decoding
def hand_context(m, history, steps, codes, i, j):
    """The context of LR_i starting at step j, concatenated here: <bos>, the last history_tokens
    word tokens of W^h + the words of steps < j, then steps j..i with the LR tokens between."""
    words = history[1:] + [t for s in steps[:j] for t in s if t < m.vocab.n_words]
    ids = [m.vocab.bos] + (words[-m.config.history_tokens:] if j else history[1:])
    for k in range(j, i):
        ids += steps[k] + [m.vocab.lr_offset + codes[k]]
    return ids + steps[i]


def test_reference_decoding_is_causal_and_consistent(model):
    history, steps = model.speaker_steps(hand_segment())
    codes = generate_nocache(model, [history], [steps])[0].tolist()
    assert len(codes) == 3 and all(0 <= c < 16 for c in codes)
    # one full forward over S built from the generated codes gives the same argmaxes at LR slots
    # (the output at each slot only depends on earlier tokens)
    S = one(model, hand_segment(), codes)
    with torch.no_grad():
        logits = model.lr_logits(torch.from_numpy(S.ids)[None])[0]
    assert logits[torch.from_numpy(S.loss_mask)].argmax(-1).tolist() == codes


def test_sliding_context_policy(tok):
    m = tiny_gpt2(tok, max_len=60, history_tokens=4).eval()   # each step is ~20 tokens: forces sliding
    seg = Segment(np.zeros((96, 56)), np.zeros((96, 56)), FPS, name="long",
                  words=[Word(WORDS[i % len(WORDS)], 0.2 * i, 0.2 * i + 0.1) for i in range(15)],
                  history_words=[Word("well", -1.0, -0.5)], sa_tokens=np.arange(160) % 9,
                  emotion=_probs(96, np.arange(96) // 8 % 8))
    history, steps = m.speaker_steps(seg)
    plan = m.context_plan(history, steps)
    assert plan[0] == 0 and all(a <= b for a, b in zip(plan, plan[1:])) and plan[-1] > 0
    codes = list(range(12))
    for i, j in enumerate(plan):
        assert len(m.context_ids(history, steps, codes, i, j)) + 1 <= 60
    # a later context starts with <bos> + the words of the dropped steps as history
    j = plan[-1]
    pre = prefix_ids(m.vocab, history, steps, j, m.config.history_tokens)
    dropped_words = [t for s in steps[:j] for t in s if m.vocab.kind(t) == "W"]
    assert pre[0] == m.vocab.bos and pre[1:] == (history[1:] + dropped_words)[-m.config.history_tokens:]
    assert len(history[1:] + dropped_words) > 4 and len(pre) == 1 + 4          # the budget cuts
    # training chunks: every step predicted exactly once, with the context inference uses
    seqs = m.build_sequences(seg, codes)
    assert len(seqs) == len(set(plan)) > 1
    assert sum((s.targets != IGNORE).sum() for s in seqs) == 12
    for s in seqs:
        assert len(s.ids) <= 60
    gen = generate_nocache(m, [history], [steps])[0].tolist()
    with torch.no_grad():   # each code is the argmax over its hand-built context
        assert gen == [int(m.lr_logits(torch.tensor([hand_context(m, history, steps, gen, i, j)]))[0, -1].argmax())
                       for i, j in enumerate(plan)]
    assert [m.context_ids(history, steps, gen, i, j) for i, j in enumerate(plan)] == \
        [hand_context(m, history, steps, gen, i, j) for i, j in enumerate(plan)]
    with pytest.raises(ValueError, match="do not fit the context"):
        m.context_plan(history, steps, max_len=10)


def test_lr_noise_only_touches_lr_inputs(model):
    S = one(model, hand_segment(), [3, 7, 11])
    ids = torch.from_numpy(np.tile(S.ids, (64, 1)))
    noisy = model.noise_lr_inputs(ids, 0.5, torch.Generator().manual_seed(0))
    changed = noisy != ids
    is_lr = (ids >= model.vocab.lr_offset) & (ids < model.vocab.sa_offset)
    assert not changed[~is_lr].any()
    assert 0.3 < changed[is_lr].float().mean() < 0.6        # ~0.5 * (1 - 1/16)
    assert ((noisy[is_lr] >= model.vocab.lr_offset) & (noisy[is_lr] < model.vocab.sa_offset)).all()
    assert torch.equal(model.noise_lr_inputs(ids, 0.0), ids)


# ----------------------------------------------------------------------------- persistence
def test_save_load_roundtrip(model, tmp_path):
    model.save_pretrained(tmp_path / "ck")
    assert {p.name for p in (tmp_path / "ck").iterdir()} >= {"config.json", "model.safetensors", "tokenizer"}
    m2 = ListenerLM.from_pretrained(tmp_path / "ck").eval()
    assert m2.vocab == model.vocab and m2.config == model.config
    S = one(model, hand_segment(), [1, 2, 3])
    x = torch.from_numpy(S.ids)[None]
    with torch.no_grad():
        assert torch.allclose(model.lr_logits(x), m2.lr_logits(x), atol=1e-6)
    assert one(m2, hand_segment(), [1, 2, 3]).ids.tolist() == S.ids.tolist()


def test_checkpoint_tokenizer_mismatch(model, tmp_path):
    model.save_pretrained(tmp_path / "ck")
    other = train_word_tokenizer(WORDS + ["extra", "words", "here", "zebra", "quartz"], vocab_size=400)
    shutil.rmtree(tmp_path / "ck" / "tokenizer")
    other.save_pretrained(str(tmp_path / "ck" / "tokenizer"))
    with pytest.raises(ValueError, match="tokenizer has .* tokens but the checkpoint's vocabulary was built for"):
        ListenerLM.from_pretrained(tmp_path / "ck")
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        ListenerLM.from_pretrained(tmp_path / "nothing")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["format"] = "something-else"
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="expected a minilisten.ListenerLM checkpoint"):
        ListenerLM.from_pretrained(tmp_path / "ck")


def test_fps_in_config(tok, tmp_path):
    m = tiny_gpt2(tok, fps=25)
    assert m.config.fps == 25.0 and LMConfig().fps == 30.0
    m.save_pretrained(tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["lm"]["fps"] == 25.0
    assert ListenerLM.from_pretrained(tmp_path / "ck").config.fps == 25.0
    for bad in (0, -25, float("nan"), True, "30"):
        with pytest.raises(ValueError, match="LMConfig.fps: expected a positive number"):
            LMConfig(fps=bad)
    with pytest.raises(ValueError, match="LMConfig.r: expected an int >= 1"):
        LMConfig(r=0)


def test_corrupt_checkpoint_files_are_named(model, tmp_path):
    d = tmp_path / "ck"
    model.save_pretrained(d)
    good = (d / "config.json").read_text()
    (d / "config.json").write_text(good[:-20])                    # truncated JSON
    with pytest.raises(ValueError, match=r"config \(.*ck/config.json\): expected valid JSON"):
        ListenerLM.from_pretrained(d)
    cfg = json.loads(good)
    del cfg["vocab"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"ListenerLM config \(.*ck/config.json\): .*missing fields \['vocab'\]"):
        ListenerLM.from_pretrained(d)
    cfg = json.loads(good)
    cfg["lm"]["bogus"] = 1
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config.json\): .*unknown LMConfig fields \['bogus'\]"):
        ListenerLM.from_pretrained(d)
    (d / "config.json").write_text(good)
    w = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(w[:len(w) // 2])       # truncated weights
    with pytest.raises(ValueError, match=r"weights \(.*ck/model.safetensors\): expected a readable safetensors file"):
        ListenerLM.from_pretrained(d)
    other = tmp_path / "other"
    tiny_gpt2(train_word_tokenizer(WORDS * 3, vocab_size=300), n_lr=8).save_pretrained(other)
    (d / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())   # another model's weights
    with pytest.raises(ValueError, match=r"ListenerLM weights \(.*ck/model.safetensors\): .*wrong shape"):
        ListenerLM.from_pretrained(d)


def test_gpt2_backbone_by_path(tok, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    bb = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=1, n_head=2))
    bb.save_pretrained(tmp_path / "gpt2-tiny")
    tok.save_pretrained(str(tmp_path / "gpt2-tiny"))
    m = ListenerLM(*load_backbone(str(tmp_path / "gpt2-tiny")), LMConfig(modalities="W+emo", n_lr=16, n_sa=32))
    assert m.max_len == 128 and m.modalities == ("W", "emo")
    assert torch.equal(m.backbone.get_input_embeddings().weight[:len(tok)], bb.get_input_embeddings().weight)
    with pytest.raises(OSError, match="could not load a causal LM"):
        load_backbone(str(tmp_path / "no-such-model"))


def test_llama_lora(tok, tmp_path):
    pytest.importorskip("peft")
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    bb = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256))
    bb.save_pretrained(tmp_path / "llama-tiny")
    tok.save_pretrained(str(tmp_path / "llama-tiny"))
    m = ListenerLM(*load_backbone(str(tmp_path / "llama-tiny")), LMConfig(lora=True, lora_r=4, n_lr=16, n_sa=32))
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and "lr_head.weight" in trainable
    assert any("trainable_tokens_delta" in n for n in trainable)
    assert not any(n.endswith("q_proj.base_layer.weight") or "embed_tokens.token_adapter.base_layer" in n
                   for n in trainable)
    emb_before = m.backbone.get_input_embeddings()(torch.arange(len(tok))).detach().clone()
    seqs = [one(m, hand_segment(), [1, 2, 3])]
    batch = collate(seqs, m.vocab.pad)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    losses = _fit(m, batch, 2, opt, 8)
    assert losses[-1] < losses[0]
    new_rows = torch.arange(m.vocab.n_words, m.vocab.size)
    assert torch.equal(m.backbone.get_input_embeddings()(torch.arange(len(tok))), emb_before)   # words frozen
    l1, _ = m.loss(collate([one(m, hand_segment())], m.vocab.pad), 1)  # stage 1 through lm_head
    assert torch.isfinite(l1)
    assert m.backbone.get_input_embeddings()(new_rows).shape == (len(new_rows), 32)
    m.eval()
    m.save_pretrained(tmp_path / "ck")
    m2 = ListenerLM.from_pretrained(tmp_path / "ck").eval()
    x = torch.from_numpy(seqs[0].ids)[None]
    with torch.no_grad():
        ref = m.lr_logits(x)
        assert torch.allclose(ref, m2.lr_logits(x), atol=1e-5)
        merged = m.merged_backbone()
        h = getattr(merged, merged.base_model_prefix)(input_ids=x).last_hidden_state
        assert torch.allclose(m.lr_head(h), ref, atol=1e-4)
    # --grad-checkpointing with LoRA (the recipe for LLaMA-size backbones): the same gradients
    m.train()

    def grads():
        m.zero_grad()
        torch.manual_seed(5)   # the same LoRA dropout masks
        m.loss(batch, 2)[0].backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    plain = grads()
    m.enable_gradient_checkpointing()
    ckpt = grads()
    assert plain.keys() == ckpt.keys() and any("lora_A" in n for n in plain)
    for n, g in plain.items():
        torch.testing.assert_close(ckpt[n], g, atol=1e-6, rtol=1e-5, msg=lambda msg: f"{n}: {msg}")


# ----------------------------------------------------------------------------- training
def _fit(m, batch, stage: int, opt, steps: int) -> list[float]:
    """``steps`` optimizer steps on one batch; the loss before each step."""
    losses = []
    for _ in range(steps):
        loss, _ = m.loss(batch, stage)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _tiny_corpus():
    from minilisten.data import synthetic_corpus
    return synthetic_corpus(seed=0, n_identities=2, n_segments=12, seconds=8)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_training_loss_decreases(tok, arch):
    c = _tiny_corpus()
    bb, t = default_backbone([w.text for s in c.train for w in s.words + s.history_words], n_layer=1, n_embd=32,
                             n_head=2, n_positions=512, arch=arch)
    assert bb.config.model_type == arch
    torch.manual_seed(0)
    m = ListenerLM(bb, t, LMConfig(n_lr=16))
    codes = [np.arange(s.T // 8) % 16 for s in c.train]       # a learnable pattern
    seqs = [one(m, s.window(0, 96), c_[:12]) for s, c_ in zip(c.train[:4], codes)]
    batch = collate(seqs, m.vocab.pad)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, betas=(0.5, 0.99))
    losses = _fit(m, batch, 2, opt, 25)
    assert losses[-1] < 0.7 * losses[0], losses
    s1 = collate([one(m, s.window(0, 96)) for s in c.train[:4]], m.vocab.pad)
    l0 = m.loss(s1, 1)[0].item()
    assert _fit(m, s1, 1, opt, 10)[-1] < l0


def test_default_backbone_arch(tmp_path):
    with pytest.raises(ValueError, match="arch: expected one of .*got 'bert'"):
        default_backbone(["a", "b"], arch="bert")
    bb, t = default_backbone(["yes no maybe"] * 4, n_layer=1, n_embd=32, n_head=2, n_positions=128)
    assert bb.config.model_type == "llama" and bb.config.max_position_embeddings == 128
    m = ListenerLM(bb, t, LMConfig(n_lr=16, n_sa=32)).eval()
    m.save_pretrained(tmp_path / "lm")
    m2 = ListenerLM.from_pretrained(tmp_path / "lm").eval()
    x = torch.randint(0, m.vocab.size, (2, 40))
    assert torch.equal(m.lr_logits(x), m2.lr_logits(x))


def test_train_lm_function_and_cli(tmp_path):
    from minilisten.train_lm import evaluate_lm, main, motion_kmeans_codes, train_lm
    c = _tiny_corpus()
    tr, (va,) = motion_kmeans_codes(c.train, [c.val], k=16, iters=3)
    m = train_lm(c.train, c.val, tr, va, stage=2, modalities="W+emo", steps=4, window=48, eval_every=2,
                 val_windows=4, progress=False, n_lr=16, backbone=dict(n_layer=1, n_embd=32, n_head=2),
                 out_dir=tmp_path / "fn", log=None)
    assert m.modalities == ("W", "emo") and len(m.train_log) == 2
    acc = evaluate_lm(m, c.val, va, window=48, max_windows=4)["acc"]
    # independent count: the first 4 windows of 48 frames taken round-robin over the segments (one
    # per segment at offset 0 first), one forward each, argmax of the LR head at the LR slots
    wins = [(i, o) for o in range(0, 10 ** 6, 48) for i, s in enumerate(c.val) if o + 48 <= s.T][:4]
    hit = tot = 0
    m.eval()
    with torch.no_grad():
        for i, o in wins:
            S = one(m, c.val[i].window(o, 48), va[i][o // 8:o // 8 + 6])
            logits = m.lr_logits(torch.from_numpy(S.ids)[None])[0]
            sel = torch.from_numpy(S.loss_mask)
            hit += int((logits[sel].argmax(-1) == torch.from_numpy(S.targets)[sel]).sum())
            tot += int(sel.sum())
    assert tot == 4 * 6 and acc == pytest.approx(hit / tot)
    assert m.train_log[-1]["acc"] == pytest.approx(acc)
    with pytest.raises(ValueError, match=r"lr_codes_train\[0\] .*expected shape \(T // r,\)"):
        train_lm(c.train, c.val, [x[:-1] for x in tr], va, stage=2, steps=1, model=m, progress=False)
    with pytest.raises(ValueError, match="steps: expected a positive int, got 0"):
        train_lm(c.train, c.val, tr, va, stage=2, steps=0, model=m, progress=False)
    with pytest.raises(ValueError, match="stage: expected 1 or 2, got 3"):
        train_lm(c.train, c.val, tr, va, stage=3, steps=1, model=m, progress=False)
    with pytest.raises(ValueError, match="stage 2: expected LR codes"):
        train_lm(c.train, c.val, None, None, stage=2, steps=1, model=m, progress=False)
    with pytest.raises(ValueError, match=r"lr_codes_train\[0\] .*codes in \[0, V_LR = 16\), got shape .* max \d+$"):
        train_lm(c.train, c.val, [x + 16 for x in tr], va, stage=2, steps=1, model=m, progress=False)
    with pytest.raises(ValueError, match=r"lr_codes_train\[0\] .*in \[0, V_LR = 16\), .*min -1, max"):   # not wrapped
        train_lm(c.train, c.val, [np.where(np.arange(len(x)) == 0, -1, x) for x in tr], va, stage=2, steps=1, model=m,
                 progress=False)
    def args(steps, eval_every=1):
        return ["--identities", "2", "--segments", "12", "--seconds", "8", "--steps", str(steps), "--window", "48",
                "--eval-every", str(eval_every), "--val-windows", "2", "--n-layer", "1", "--n-embd", "32",
                "--n-head", "2", "--n-lr", "16", "--no-progress"]
    assert main(["--stage", "1", "--out", str(tmp_path / "s1"), "--modalities", "W+emo", *args(2)]) == 0
    assert main(["--stage", "2", "--init", str(tmp_path / "s1"), "--out", str(tmp_path / "s2"), *args(2)]) == 0
    s1 = ListenerLM.from_pretrained(tmp_path / "s1")
    s2 = ListenerLM.from_pretrained(tmp_path / "s2")
    assert s2.vocab == s1.vocab and s2.vocab.n_lr == 16
    assert s1.modalities == s2.modalities == ("W", "emo")          # stage 2 keeps the --init model's modalities
    # resume: continue the stage-2 run to 4 steps
    assert main(["--stage", "2", "--out", str(tmp_path / "s2"), "--resume", *args(4, eval_every=2)]) == 0
    st = json.loads((tmp_path / "s2" / "train_state.json").read_text())
    assert st["info"]["step"] == 4 and st["info"]["config"]["stage"] == 2
    with pytest.raises(ValueError, match="drop --modalities"):
        main(["--stage", "2", "--out", str(tmp_path / "s2"), "--resume", "--modalities", "W", *args(4)])
    with pytest.raises(ValueError, match="holds a stage-2 run"):
        main(["--stage", "1", "--out", str(tmp_path / "s2"), "--resume", *args(4)])
    with pytest.raises(ValueError, match="V_LR = 16 but the LR codes come from a codebook of 32"):
        main(["--stage", "2", "--init", str(tmp_path / "s1"), "--out", str(tmp_path / "s3"), *args(1)[:-3],
              "--n-lr", "32", "--no-progress"])


def test_resume_is_exact(tmp_path):
    from minilisten.train_lm import motion_kmeans_codes, train_lm
    c = _tiny_corpus()
    tr, (va,) = motion_kmeans_codes(c.train, [c.val], k=16, iters=2)
    kw = dict(stage=2, modalities="W+SA+emo", window=48, eval_every=2, val_windows=2, progress=False, n_lr=16,
              backbone=dict(n_layer=1, n_embd=32, n_head=2), log=None)
    full = train_lm(c.train, c.val, tr, va, steps=4, out_dir=tmp_path / "full", **kw)
    train_lm(c.train, c.val, tr, va, steps=2, out_dir=tmp_path / "part", **kw)
    resumed = train_lm(c.train, c.val, tr, va, steps=4, out_dir=tmp_path / "part", resume=True,
                       **{k: v for k, v in kw.items() if k not in ("modalities", "backbone")})
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n


def test_gradient_checkpointing_same_training_less_memory():
    """--grad-checkpointing: the same parameters after training (recomputation, not approximation),
    and fewer bytes saved for backward in one training forward (counted by saved_tensors_hooks)."""
    from minilisten.train_lm import motion_kmeans_codes, train_lm
    c = _tiny_corpus()
    tr, (va,) = motion_kmeans_codes(c.train, [c.val], k=16, iters=2)
    kw = dict(stage=2, modalities="W+SA+emo", window=48, eval_every=0, val_windows=2, progress=False, n_lr=16,
              backbone=dict(n_layer=3, n_embd=32, n_head=2), log=None, steps=3)
    plain = train_lm(c.train, c.val, tr, va, **kw)
    ckpt = train_lm(c.train, c.val, tr, va, grad_checkpointing=True, **kw)
    for (n, a), (_, b) in zip(plain.state_dict().items(), ckpt.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=n)

    from minilisten.tokens import collate
    from minilisten.train_lm import _sequences
    from minilisten.training import windows as _windows
    batch = collate(_sequences(plain, c.train, tr, _windows(c.train, 48, 8, 8)[:4], 48, 2), plain.vocab.pad)

    def saved_bytes(model):
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t
        model.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.loss(batch, 2, 0.0)[0].backward()
        return total[0]
    without = saved_bytes(plain)
    with_ckpt = saved_bytes(ckpt)   # train_lm enabled checkpointing on this model
    assert with_ckpt < 0.6 * without, (with_ckpt, without)


@pytest.mark.compile
def test_compiled_training_step_matches_eager():
    """--compile (the backbone under torch.compile, in place): the same training to float rounding,
    and the checkpoint's parameter names unchanged."""
    from minilisten.train_lm import motion_kmeans_codes, train_lm
    c = _tiny_corpus()
    tr, (va,) = motion_kmeans_codes(c.train, [c.val], k=16, iters=2)
    kw = dict(stage=2, modalities="W+SA+emo", window=48, eval_every=0, val_windows=2, progress=False, n_lr=16,
              backbone=dict(n_layer=1, n_embd=32, n_head=2), log=None, steps=2)
    from torch._dynamo.utils import counters
    eager = train_lm(c.train, c.val, tr, va, **kw)
    counters.clear()
    compiled = train_lm(c.train, c.val, tr, va, compile=True, **kw)
    assert counters["stats"]["unique_graphs"] >= 1   # it did compile
    a, b = eager.state_dict(), compiled.state_dict()
    assert list(a) == list(b)
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=1e-5, rtol=1e-4, msg=n)
