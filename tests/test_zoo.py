"""The zoo: matched LSTM, GPT-2 and BERT language models trained under seeds, their folders and the command."""
import csv
import inspect
import json

import pytest
import torch
from safetensors.torch import load_file

from homoscope.cli import ZOO_DEFAULTS, main
from homoscope.corpora import load_corpus
from homoscope.extract import extract
from homoscope.models import load_model
from homoscope.zoo import FAMILIES, FAMILY, non_embedding_params, parameter_counts, train_zoo
from homoscope.zoo.data import SPECIALS, batch_order, hold_out, mask_tokens, stream_seed
from homoscope.zoo.families import build_model, choose_widths, family_config

STEPS = 20
# a small, learnable zoo: 300 BBC News sentences (about as many articles), models of about 20,000
# non-embedding parameters, 20 steps of 8 windows of 32 tokens
OPTIONS = dict(seeds=2, steps=STEPS, params=20_000, batch_size=8, seq_len=32, holdout=30, device="cpu",
               progress=False)
KINDS = {"lstm": "recurrent", "gpt": "decoder", "bert": "encoder"}


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("bbc", sentences=300, seed=0)


@pytest.fixture(scope="module")
def zoos(tmp_path_factory, corpus):
    """The same zoo trained twice (seeds 0 and 1, then seed 0 alone), on one thread: for models this small one
    thread is faster than two, and is not slowed down many times over by other work on the machine."""
    root = tmp_path_factory.mktemp("zoo")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = train_zoo(root / "a", corpus=corpus, **OPTIONS)
        b = train_zoo(root / "b", corpus=corpus, **{**OPTIONS, "seeds": 1})
    finally:
        torch.set_num_threads(threads)
    return a, b


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_gives_identical_weights_and_other_seeds_other_weights(zoos, family):
    a, b = zoos
    first, again, other = (_weights(z.out / f"{family}-s{s}") for z, s in ((a, 0), (b, 0), (a, 1)))
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    matrices = [k for k in first if first[k].dim() == 2]
    assert matrices and not any(torch.equal(first[k], other[k]) for k in matrices)


def test_seeds_draw_different_data_orders_and_masks():
    orders = [batch_order(100, 5, 8, torch.Generator().manual_seed(stream_seed(s, "data"))) for s in (0, 0, 1)]
    assert torch.equal(orders[0], orders[1]) and not torch.equal(orders[0], orders[2])
    assert stream_seed(0, "data") != stream_seed(0, "mask")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_folder_loads_with_its_kind_recipe_and_seed_and_gives_finite_layers(zoos, family):
    a, _ = zoos
    texts = [json.loads(line)["text"] for line in (a.out / "heldout.jsonl").read_text().splitlines()][:12]
    for seed in (0, 1):
        loaded = load_model(a.out / f"{family}-s{seed}", device="cpu")
        info = loaded.info
        assert (info.kind, info.recipe, info.seed, info.blocks) == (KINDS[family], f"zoo-{family}", seed, 2)
        assert info.license == "same as the corpus" and "non-embedding" in info.notes
        stack = extract(loaded, texts, progress=False)
        assert stack.shape == (3, len(texts), info.width) and torch.isfinite(stack).all()


def test_every_model_has_the_same_tokenizer_files(zoos):
    a, b = zoos
    folders = [a.out / name for name in a.folders] + [b.out / name for name in b.folders]
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert len({(f / name).read_bytes() for f in folders}) == 1
    loaded = load_model(folders[0], device="cpu").tokenizer
    ids = loaded("the cat sat.")["input_ids"]
    assert ids[0] == SPECIALS.index("[CLS]") and ids[-1] == SPECIALS.index("[SEP]")
    assert (loaded.pad_token, loaded.unk_token, loaded.mask_token) == ("[PAD]", "[UNK]", "[MASK]")
    assert "token_type_ids" not in loaded("the cat sat.")


def test_heldout_documents_are_whole_and_not_trained_on(zoos, corpus):
    a, _ = zoos
    rows = [json.loads(line) for line in (a.out / "heldout.jsonl").read_text().splitlines()]
    held_docs = {r["doc"] for r in rows}
    held, kept = hold_out(corpus, OPTIONS["holdout"])
    assert len(rows) == len(held) >= OPTIONS["holdout"]
    assert held_docs == {corpus.doc_ids[i] for i in held}
    assert not held_docs & {corpus.doc_ids[i] for i in kept}  # whole documents
    assert not {r["text"] for r in rows} & {corpus.texts[i] for i in kept}
    assert all(set(r) == {"text", "label", "doc", "id"} for r in rows)
    again = load_corpus(a.out / "heldout.jsonl", sentences=None, label_column="label", doc_column="doc")
    assert len(again) == len(rows) and set(again.doc_ids) == held_docs
    assert a.summary["holdout"]["train_texts"] == len(kept)


def test_hold_out_takes_documents_by_their_hash_until_enough(corpus):
    assert hold_out(corpus, 0) == ([], list(range(len(corpus))))
    small, _ = hold_out(corpus, 5)
    large, _ = hold_out(corpus, 50)
    assert set(small) <= set(large) and len(large) >= 50
    with pytest.raises(ValueError, match="holdout=100000 holds out every text"):
        hold_out(corpus, 100_000)


def test_curves_have_a_row_per_step_and_model_and_the_loss_falls(zoos):
    a, _ = zoos
    with open(a.out / "curves.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == STEPS * len(a.folders)
    for name in a.folders:
        family, seed = name.split("-s")
        losses = [float(r["loss"]) for r in rows if r["family"] == family and r["seed"] == seed]
        assert [int(r["step"]) for r in rows if r["family"] == family and r["seed"] == seed] == list(range(1, 21))
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, (name, losses)
        assert {r["objective"] for r in rows if r["family"] == family} == {
            "masked-token" if family == "bert" else "next-token"}
    assert (a.out / "curves.png").stat().st_size > 10_000


def test_budgets_are_matched_and_counted_as_stated(zoos):
    a, _ = zoos
    summary = a.summary
    for family, row in summary["families"].items():
        assert abs(row["non_embedding_params"] - OPTIONS["params"]) <= 0.1 * OPTIONS["params"]
        marker = json.loads((a.out / f"{family}-s0" / "homoscope_model.json").read_text())
        assert (marker["params"], marker["non_embedding_params"]) == (row["params"], row["non_embedding_params"])
        assert marker["steps"] == STEPS and marker["final_loss"] > 0 and marker["seed"] == 0
    assert choose_widths(400_000, FAMILIES, blocks=2, heads=4) == {"lstm": 158, "gpt": 128, "bert": 128}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("width,blocks", [(16, 1), (28, 2), (40, 3)])
def test_non_embedding_formula_matches_the_models(family, width, blocks):
    class Tok:
        cls_token_id, sep_token_id, pad_token_id = 2, 3, 0

    config = family_config(family, width, vocab_size=97, blocks=blocks, heads=4, positions=16, tokenizer=Tok())
    total, non_embedding = parameter_counts(build_model(family, config), 97)
    assert non_embedding == non_embedding_params(family, width, blocks) and total > non_embedding


def test_mask_tokens_follows_the_80_10_10_rule_and_never_masks_specials():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(len(SPECIALS), 1000, (400, 250), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    inputs, labels = mask_tokens(ids, mask_id=4, n_special=5, vocab_size=1000, generator=g)
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, -1].any()
    assert torch.equal(labels[chosen], ids[chosen])
    assert abs(chosen.float().mean().item() - 0.15 * 248 / 250) < 0.005
    masked = (inputs[chosen] == 4).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and torch.equal(inputs[~chosen], ids[~chosen])


def test_command_defaults_are_train_zoos():
    signature = inspect.signature(train_zoo).parameters
    for name, default in ZOO_DEFAULTS.items():
        want = signature[name].default
        if name == "families":
            want = ",".join(want)
        if name == "device":
            want = "auto" if want is None else want
        if name == "lr":
            assert want is None and default == "each family's own: " + ", ".join(
                f"{f} {FAMILY[f].lr:g}" for f in FAMILIES)
            continue
        assert default == want, name


@pytest.mark.parametrize("argv,named", [
    (["--seeds", "0"], "--seeds=0 must be an integer >= 1"),
    (["--steps", "2.5"], "--steps=2.5 must be an integer >= 1"),
    (["--families", "lstm,rnn"], "--families=lstm,rnn names unknown family 'rnn'"),
    (["--families", "gpt,gpt"], "--families=gpt,gpt names a family twice"),
    (["--params", "50"], "--params=50 cannot be matched within 10%"),
    (["--params", "1000000000000000000"], "--params=1000000000000000000 must be at most 1,000,000,000"),
    (["--lr", "fast"], "--lr=fast must be a positive number"),
    (["--holdout", "-1"], "--holdout=-1 must be an integer >= 0"),
    (["--device", "tpu9"], "--device=tpu9 is not a device"),
])
def test_command_errors_name_the_option_on_one_line(tmp_path, capsys, argv, named):
    assert main(["zoo", "--out", str(tmp_path / "zoo"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("homoscope: error: ") and named in err
    assert not (tmp_path / "zoo").exists()


def test_command_refuses_a_folder_with_files(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["zoo", "--out", str(tmp_path)]) == 2
    assert "--out=" in capsys.readouterr().err and (tmp_path / "notes.txt").read_text() == "mine"


def test_a_study_compares_the_three_families_token_by_token(zoos, tmp_path):
    from homoscope.study import Study, run_study

    a, _ = zoos
    models = [str(a.out / f"{family}-s0") for family in FAMILIES]
    study = Study(models=models, corpus=str(a.out / "heldout.jsonl"), label_column="label", doc_column="doc",
                  sentences=0, unit="token", measures=["linear_cka"], agreement="off", out=str(tmp_path / "out"),
                  store=str(tmp_path / "store"))
    frame = run_study(study, progress=False, log=None).frame
    assert len(frame) == 3 * 3 * 3 and frame["value"].between(0, 1).all()
    assert frame["n"].nunique() == 1 and frame["n"].iloc[0] > 100  # one row per token, the same tokens for all


def test_a_rerun_removes_what_a_killed_run_left_and_a_second_run_at_once_is_refused(tmp_path):
    from filelock import FileLock

    from homoscope.zoo.build import _held

    target = tmp_path / "zoo"
    (tmp_path / ".zoo.zoo-deadbeef").mkdir()
    (tmp_path / ".zoo.zoo-deadbeef" / "heldout.jsonl").write_text("{}\n")
    with _held(target):
        assert not list(tmp_path.glob(".zoo.zoo-*"))
    with FileLock(str(tmp_path / ".zoo.zoo.lock")):
        with pytest.raises(ValueError, match="another zoo is being trained into this folder"):
            with _held(target):
                pass
