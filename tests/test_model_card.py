"""A GPP model card and its model file are checked against each other before LightGBM reads
the file: feature names and order, the model file's hash, its structure. A card that disagrees
with its model, or a damaged model file, is a ModelError (exit 3) naming the files — never a
map made with the wrong features, never a crash — and a day's item names both files' hashes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from unique_cube.config.pipeline import load_pipeline
from unique_cube.errors import ModelError
from unique_cube.files import sha256_file
from unique_cube.gpp.features import FEATURES
from unique_cube.gpp.learners import Fitted, fit_learner, save_model
from unique_cube.gpp.model import GppModel, ModelCard, check_model, load_in_child
from unique_cube.gpp.train import train

PIPELINE = """\
name: model-card
catalog: demo
flux: {{directory: {root}/flux, sites: {root}/flux/sites.csv}}
gpp:
  train: {{start: 2023-01-01, end: 2023-12-31}}
  modis: {{source: modis-sr}}
  landsat: {{source: hls-l30}}
  output: {root}/models
grid: {{crs: "EPSG:32652", bounds: [346020.0, 4171890.0, 350820.0, 4176690.0]}}
product:
  output: {root}/product
  scheme: bilinear
"""


def _rows(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows and a GPP that depends on ndvi and tair_local very differently."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    x[:, FEATURES.index("ndvi")] = rng.uniform(0.1, 0.9, n)
    y = 12 * x[:, FEATURES.index("ndvi")] + 0.8 * x[:, FEATURES.index("tair_local")]
    return x, y + rng.normal(0, 0.3, n)


def _card(folder: Path, learner: str, model_sha256: str, x: np.ndarray) -> Path:
    card = ModelCard(
        name="gpp_modis", learner=learner, model_file="gpp_modis.model",
        model_sha256=model_sha256, features=FEATURES,
        feature_ranges={f: (float(x[:, i].min()), float(x[:, i].max()))
                        for i, f in enumerate(FEATURES)},
        target="GPP (gC m-2 day-1)", n_rows=len(x), n_sites=0, folds=2, fold_of_site={}, cv={},
        learner_comparison={}, params={}, training_data_sha256="0" * 64, versions={},
    )  # fmt: skip
    card.write(folder / "gpp_modis.card.json")
    return folder / "gpp_modis.card.json"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LightGBM model and its card as `unique-cube train-gpp` writes them (``train``)."""
    x, y = _rows(600)
    table = {f: x[:, i] for i, f in enumerate(FEATURES)}
    sites = pd.DataFrame({"site": [f"S{i}" for i in range(6)], "lat": np.linspace(37, 38, 6),
                          "lon": np.linspace(127, 128, 6)})  # fmt: skip
    frame = pd.DataFrame(table).assign(
        gpp=y, site=[f"S{i % 6}" for i in range(len(y))], igbp="DBF",
        date=pd.Timestamp("2023-06-01"),
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("trained")
    train(frame, sites, folder, "gpp_modis", learners=["lightgbm"], n_folds=2, threads=1)
    return folder


@pytest.fixture
def models(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained model and card that a test may damage."""
    folder = tmp_path / "models"
    shutil.copytree(trained, folder)
    return folder


@pytest.fixture(scope="module")
def small_booster_text() -> str:
    """A small LightGBM model (20 trees of 7 leaves): quick to load many times."""
    import lightgbm as lgb

    x, y = _rows(400)
    params = {"objective": "regression", "num_leaves": 7, "verbose": -1, "num_threads": 1}
    data = lgb.Dataset(x, y, feature_name=list(FEATURES))
    return lgb.train(params, data, num_boost_round=20).model_to_string()


def _edit_card(card_path: Path, **changes) -> None:
    card = json.loads(card_path.read_text())
    card.update(changes)
    card_path.write_text(json.dumps(card, indent=1))


def _swapped(features: tuple[str, ...]) -> list[str]:
    swapped = list(features)
    i, j = swapped.index("ndvi"), swapped.index("tair_local")
    swapped[i], swapped[j] = swapped[j], swapped[i]
    return swapped


def _cut(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - max(1, int(len(data) * fraction))])


def _run(spec: Path) -> subprocess.CompletedProcess:
    """`unique-cube run` in its own process: a crash there is an exit code, not this test's."""
    argv = [sys.executable, "-m", "unique_cube.cli", "run", str(spec), "--date", "2023-08-01"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def _spec(root: Path) -> Path:
    spec = root / "pipeline.yaml"
    spec.write_text(PIPELINE.format(root=root))
    return spec


# --- what training writes ------------------------------------------------------------------


def test_training_writes_the_feature_names_and_the_hash_the_card_is_checked_by(
    trained: Path, tmp_path: Path
) -> None:
    card_path = trained / "gpp_modis.card.json"
    card = ModelCard.read(card_path)
    assert card.model_sha256 == sha256_file(trained / "gpp_modis.model")
    assert "feature_names=" + " ".join(FEATURES) in (trained / "gpp_modis.model").read_text()
    checked = check_model(card_path)
    assert checked.card_sha256 == sha256_file(card_path)
    model = GppModel(card_path)
    x, y = _rows(200, seed=5)
    assert np.corrcoef(model.predict(x), y)[0, 1] > 0.9
    # The ridge learner keeps its feature names in its JSON file, and is checked the same way.
    ridge = fit_learner("linear", x, y, threads=1, seed=0)
    card_path = _card(tmp_path, "linear", save_model(ridge, tmp_path / "gpp_modis.model",
                                                      FEATURES), x)  # fmt: skip
    assert json.loads((tmp_path / "gpp_modis.model").read_text())["features"] == list(FEATURES)
    np.testing.assert_allclose(GppModel(card_path).predict(x), ridge.predict(x), rtol=1e-6)
    _edit_card(card_path, features=_swapped(FEATURES))
    with pytest.raises(ModelError, match="feature 1 is tair_local in the card, ndvi in the model"):
        GppModel(card_path)


# --- item 1: a card whose feature names were swapped ---------------------------------------


def test_a_card_with_two_features_swapped_is_refused_naming_both_files(models: Path) -> None:
    card_path, model_path = models / "gpp_modis.card.json", models / "gpp_modis.model"
    _edit_card(card_path, features=_swapped(FEATURES))
    expected = (
        f"{card_path} and its model {model_path} disagree: "
        "feature 1 is tair_local in the card, ndvi in the model; "
        "feature 6 is ndvi in the card, tair_local in the model; "
    )
    for load in (check_model, GppModel):
        with pytest.raises(ModelError) as caught:
            load(card_path)
        assert str(caught.value).startswith(expected)
        assert "retrain" in str(caught.value)
    _edit_card(card_path, features=list(FEATURES)[:-1])  # one feature dropped
    with pytest.raises(
        ModelError,
        match=rf"the card lists {len(FEATURES) - 1} features .*, the model takes {len(FEATURES)}",
    ):
        check_model(card_path)


def test_run_refuses_a_swapped_card_before_any_day(models: Path, capsys) -> None:
    from unique_cube.cli import main

    spec = _spec(models.parent)
    _edit_card(models / "gpp_modis.card.json", features=_swapped(FEATURES))
    assert main(["run", str(spec), "--date", "2023-08-01"]) == 3
    err = capsys.readouterr().err
    assert f"{models / 'gpp_modis.card.json'} and its model {models / 'gpp_modis.model'}" in err
    assert "feature 1 is tair_local in the card, ndvi in the model" in err
    assert not (models.parent / "product").exists()  # no day begun


def test_a_card_without_the_model_hash_is_refused(models: Path) -> None:
    """Cards written before they carried ``model_sha256`` cannot be checked: retrain."""
    card_path = models / "gpp_modis.card.json"
    card = json.loads(card_path.read_text())
    del card["model_sha256"]
    card_path.write_text(json.dumps(card))
    assert ModelCard.read(card_path).model_sha256 is None  # still readable, for reports
    with pytest.raises(ModelError, match=r"has no model_sha256 .* retrain with `unique-cube"):
        GppModel(card_path)
    _edit_card(card_path, model_sha256=12)
    with pytest.raises(ModelError, match="model_sha256 12 is not a SHA-256 in hex"):
        GppModel(card_path)


# --- item 2: a model file cut short or edited ----------------------------------------------


@pytest.mark.parametrize("fraction", [0.001, 0.5], ids=["cut-0.1%", "cut-50%"])
def test_a_truncated_model_is_refused_in_process_and_by_run(models: Path, fraction) -> None:
    card_path, model_path = models / "gpp_modis.card.json", models / "gpp_modis.model"
    _cut(model_path, fraction)
    with pytest.raises(ModelError) as caught:
        GppModel(card_path)
    message = str(caught.value)
    assert message.startswith(f"{model_path}: not a LightGBM model (not handed to it): ")
    assert f"is not the model_sha256 {ModelCard.read(card_path).model_sha256[:16]}" in message
    # The card edited to match the damaged file: the structure alone refuses it.
    _edit_card(card_path, model_sha256=sha256_file(model_path))
    with pytest.raises(ModelError, match=r"not a LightGBM model .*cut short"):
        GppModel(card_path)
    done = _run(_spec(models.parent))
    assert done.returncode == 3, done.stderr
    assert f"{model_path}: not a LightGBM model" in done.stderr
    assert "Traceback" not in done.stderr


def _retext(card_path: Path, text: str) -> None:
    """Replace the model file and update its card's hash to match (a deliberate edit)."""
    (card_path.parent / "gpp_modis.model").write_text(text)
    _edit_card(card_path, model_sha256=hashlib.sha256(text.encode()).hexdigest())


def _first(key: str, change):
    """An edit of the first tree's ``key=`` line: its values through ``change``."""

    def edit(text: str) -> str:
        return re.sub(rf"\n{key}=([^\n]*)\n", lambda m: f"\n{key}={change(m[1])}\n", text,
                      count=1)  # fmt: skip

    return edit


def _resized(edit):
    """``edit``, then ``tree_sizes`` made to fit the edited trees (a careful editor)."""

    def both(text: str) -> str:
        text = edit(text)
        starts = [m.start() + 1 for m in re.finditer(r"\n(?:Tree=\d+|end of trees)\n", text)]
        sizes = " ".join(str(b - a) for a, b in itertools.pairwise(starts))
        return re.sub(r"\ntree_sizes=[^\n]*\n", f"\ntree_sizes={sizes}\n", text, count=1)

    return both


def _values(change):
    return lambda value: " ".join(change(value.split(" ")))


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (_first("tree_sizes", _values(lambda v: [str(int(v[0]) + 7), *v[1:]])),
         r"tree 0 of 20 \(at byte \d+\): the block does not end with a blank line"),
        (_resized(_first("right_child", _values(lambda v: ["99", *v[1:]]))),
         "node 0's child 99 is not a new node of"),
        (_resized(_first("left_child", _values(lambda v: ["0", *v[1:]]))),
         "node 0's child 0 is not a new node of"),  # a cycle
        (_resized(_first("left_child", _values(lambda v: v[:-1]))),
         r"left_child has (\d+) values, not (\d+)"),
        (_resized(_first("split_feature", _values(lambda v: [str(len(FEATURES)), *v[1:]]))),
         f"split_feature {len(FEATURES)} is not one of {len(FEATURES)} features"),
        (_resized(_first("num_leaves", lambda v: str(int(v) + 2))),
         r"leaf_value has \d+ values, not \d+"),
        (_resized(_first("decision_type", _values(lambda v: ["1", *v[1:]]))),
         "decision_type 1 is not a numerical split"),
        (_resized(_first("leaf_value", _values(lambda v: ["nan", *v[1:]]))),
         "leaf_value holds a value that is not finite"),
        (_resized(_first("num_cat", lambda v: "1")),
         "categorical splits, which unique-cube models never have"),
        (lambda text: text.replace("\nend of trees\n", "\nend of treez\n"),
         "no 'end of trees' where tree_sizes end"),
        (lambda text: text.replace("pandas_categorical:null", ""),
         "does not end with 'pandas_categorical:null'"),
        (lambda text: text.replace("\nnum_cat=0\n", "\nnum_cat=0\x00\n", 1), "a NUL byte"),
    ],
    ids=["tree-sizes", "child-index", "child-cycle", "child-count", "feature-index",
         "num-leaves", "categorical-decision", "leaf-nan", "categorical-tree", "end-of-trees",
         "tail-cut", "nul"],
)  # fmt: skip
def test_an_edited_model_with_its_hash_updated_is_refused_by_structure(
    tmp_path: Path, small_booster_text: str, edit, problem: str
) -> None:
    x, _ = _rows(50)
    card_path = _card(tmp_path, "lightgbm", "", x)
    _retext(card_path, _resized(lambda t: t)(small_booster_text))
    GppModel(card_path)  # the model as LightGBM wrote it (sizes recomputed the same) loads
    edited = edit(small_booster_text)
    assert edited != small_booster_text
    _retext(card_path, edited)
    with pytest.raises(ModelError, match=f"gpp_modis.model: not a LightGBM model .*{problem}"):
        GppModel(card_path)


def test_random_edits_of_a_model_never_crash_the_process(
    tmp_path: Path, small_booster_text: str
) -> None:
    """Seeded random byte edits (hash updated each time), each loaded and applied: refused or
    loaded, the process lives. Without the structural check, LightGBM crashed (SIGSEGV or
    SIGABRT) within a few hundred such edits in every seed tried."""
    x, _ = _rows(50)
    card_path = _card(tmp_path, "lightgbm", "", x)
    text_path = tmp_path / "original.txt"
    text_path.write_text(small_booster_text)
    script = f"""
import hashlib, json, random, sys
import numpy as np
from pathlib import Path
from unique_cube.errors import ModelError
from unique_cube.gpp.model import GppModel
card_path = Path({str(card_path)!r})
text = Path({str(text_path)!r}).read_text()
rng = random.Random(0)
rows = np.random.default_rng(0).normal(size=(64, {len(FEATURES)})) * 3
rows[0] = np.nan
refused = loaded = 0
for k in range(400):
    chars = list(text)
    for _ in range(rng.choice([1, 1, 2, 3])):
        i = rng.randrange(len(chars))
        op = rng.random()
        if op < 0.6:
            chars[i] = rng.choice("0123456789-=. \\n\\ne+Tabx")
        elif op < 0.8:
            del chars[i]
        else:
            chars.insert(i, rng.choice("0123456789-= \\n"))
    edited = "".join(chars)
    if rng.random() < 0.1:
        edited = edited[: rng.randrange(len(edited))]
    card_path.with_name("gpp_modis.model").write_text(edited)
    card = json.loads(card_path.read_text())
    card["model_sha256"] = hashlib.sha256(edited.encode()).hexdigest()
    card_path.write_text(json.dumps(card))
    try:
        GppModel(card_path).predict(rows, num_threads=1)
        loaded += 1
    except ModelError:
        refused += 1
print(json.dumps({{"refused": refused, "loaded": loaded}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["refused"] + counts["loaded"] == 400
    assert counts["refused"] > 200 and counts["loaded"] > 10  # edits of values stay loadable


def test_the_child_process_guard_turns_a_lightgbm_crash_into_a_model_error(models: Path) -> None:
    """``check_models`` loads the checked model in a child process first: were LightGBM to crash
    on a file the check passed, the run gets a ModelError naming it. Here the check is
    bypassed and the child is handed a cut text, on which LightGBM crashes or fails."""
    checked = check_model(models / "gpp_modis.card.json")
    load_in_child(checked)  # a sound model: nothing to say
    cut = dataclasses.replace(checked, text=checked.text[: len(checked.text) // 2])
    with pytest.raises(ModelError) as caught:
        load_in_child(cut)
    message = str(caught.value)
    assert message.startswith(f"{models / 'gpp_modis.model'} (of {models / 'gpp_modis.card.json'})")
    assert "LightGBM crashed (SIG" in message or "LightGBM could not load" in message


def test_a_linear_model_file_that_is_damaged_is_refused(tmp_path: Path) -> None:
    x, y = _rows(100)
    model = fit_learner("linear", x, y, threads=1, seed=0)
    card_path = _card(tmp_path, "linear", save_model(model, tmp_path / "gpp_modis.model",
                                                      FEATURES), x)  # fmt: skip
    broken = Fitted("linear", coef=model.coef[:-1], mean=model.mean, scale=model.scale)
    _card(tmp_path, "linear", save_model(broken, tmp_path / "gpp_modis.model", FEATURES), x)
    with pytest.raises(ModelError, match=r"not a linear model file: coef, mean and scale"):
        GppModel(card_path)


# --- the day's provenance ------------------------------------------------------------------


def test_check_models_puts_the_model_and_card_hashes_in_the_days_item(models: Path) -> None:
    from unique_cube.grid import coarse_geobox
    from unique_cube.product.models import check_models
    from unique_cube.product.stac import day_item
    from unique_cube.product.store import ProductStore

    pipeline = load_pipeline(_spec(models.parent))
    checked = check_models(pipeline)
    assert checked.hashes == {
        "gpp_modis": sha256_file(models / "gpp_modis.model"),
        "gpp_modis_card": sha256_file(models / "gpp_modis.card.json"),
    }
    geobox = pipeline.grid.geobox
    store = ProductStore(pipeline.product.output, geobox, coarse_geobox(geobox))
    item = day_item(pipeline, store, dt.date(2023, 8, 1), {}, {}, {"scheme": "bilinear"},
                    checked.hashes)  # fmt: skip
    assert item["properties"]["unique_cube:models"] == {
        "gpp_modis": {"sha256": sha256_file(models / "gpp_modis.model")},
        "gpp_modis_card": {"sha256": sha256_file(models / "gpp_modis.card.json")},
    }
    # A correct card and one with two features swapped never share provenance: the swapped
    # one is refused before any day, and any edit of a card changes the card's hash.
    _edit_card(models / "gpp_modis.card.json", features=_swapped(FEATURES))
    with pytest.raises(ModelError, match="feature 1 is tair_local in the card"):
        check_models(pipeline)
