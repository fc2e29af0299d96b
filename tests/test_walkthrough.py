"""The README's "Use on your own slides", run as written.

The `python` commands are read from the README itself, in order, so the text and
the test cannot drift apart; only sizes are shrunk by appending flags (small
tiles, the small backbone for the source model, one short round). A simulated
pathologist classifies the query squares (imported without a class) that lie inside a known
region, confirms one (sets the predicted class), sets one to Ignore*, and
deletes or leaves untouched the others; the labelled set must grow by exactly
the squares given a class, with those classes.
"""

from __future__ import annotations

import json
import re
import shlex
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml

import active_learning_inference
import active_learning_train
import tfrecord_generator
from tests.conftest import ROOT
from utils.common.io import read_csv
from utils.tiles.synthetic import TARGET_STAIN, SyntheticRegion, make_slide, rectangle, write_geojson

TILE = 32
SIDE = 512
SCRIPTS = {"tfrecord_generator.py": tfrecord_generator.main, "active_learning_train.py": active_learning_train.main,
           "active_learning_inference.py": active_learning_inference.main}
SHRINK = {
    "tfrecord_generator.py": ["--tile-size", str(TILE)],
    "active_learning_train.py": ["--epochs", "1",
                                 "--batch-size", "32", "--initial", "10", "--budget", "12", "--rounds", "1",
                                 "--eval-cap", "30"],
}
SOURCE_MODEL = ["--backbone", "small", "--backbone-weights", "none", "--head-units", "32", "--learning-rate", "1e-3"]


def readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text[text.index("## Use on your own slides"):text.index("## The scripts")]


def readme_commands() -> list[list[str]]:
    """The `python` commands of the section's bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme_section(), flags=re.DOTALL):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip().startswith("python "):
                commands.append(shlex.split(line)[1:])
    return commands


def readme_config() -> dict:
    block = re.search(r"```yaml\n(.*?)```", readme_section(), flags=re.DOTALL).group(1)
    return yaml.safe_load(textwrap.dedent(block))


def regions(i: int) -> list[SyntheticRegion]:
    """Four tissue squares, tumour and stroma alternating, glass between them."""
    q = SIDE // 2
    out = []
    for k, (cx, cy) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        tumour = (k + i) % 2 == 0
        out.append(SyntheticRegion("urothelium" if tumour else "stroma", "Tumour" if tumour else "Lamina propria",
                                   rectangle(cx * q + 24, cy * q + 24, cx * q + q - 24, cy * q + q - 24)))
    return out


def truth(square: dict, known: list[SyntheticRegion]) -> str | None:
    """The class of the known region that holds the square whole, as a
    pathologist would pick it in QuPath: its built-in "Tumor" or "Stroma"
    (the configured "tumor" and "stroma" but for case)."""
    (ring,) = square["geometry"]["coordinates"]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    for region in known:
        (x0, y0), (x1, y1) = region.exterior[0], region.exterior[2]
        if x0 <= min(xs) and max(xs) <= x1 and y0 <= min(ys) and max(ys) <= y1:
            return "Tumor" if region.name == "Tumour" else "Stroma"
    return None


def centre(square: dict) -> tuple[str, str]:
    (ring,) = square["geometry"]["coordinates"]
    return (str(int((min(p[0] for p in ring) + max(p[0] for p in ring)) / 2)),
            str(int((min(p[1] for p in ring) + max(p[1] for p in ring)) / 2)))


def label_in_qupath(queries: Path, annotations: Path) -> dict[str, dict]:
    """The simulated pathologist, square by square, on what QuPath imported:
    the first square they can judge is confirmed (set to the class its name
    predicts), the second is set to Ignore*, the others get their true class;
    of the squares they cannot judge, every other one is deleted and the rest
    are left as imported, unreviewed. Everything is then exported together
    with the earlier annotations, as QuPath writes them (with an id per
    object). Returns the expected class of every square that should count,
    casefolded (QuPath's "Tumor" and "Stroma" are the configured "tumor" and "stroma")."""
    expected, judged, unjudged = {}, 0, 0
    for path in sorted(queries.glob("*.geojson")):
        known = regions(int(path.stem[1:]))
        kept = []
        for square in json.loads(path.read_text())["features"]:
            assert "classification" not in square["properties"], "squares arrive without a class"
            true_class = truth(square, known)
            if true_class is None:
                unjudged += 1
                if unjudged % 2:
                    kept.append({**square, "id": str(uuid.uuid4())})  # left as imported
                continue  # else deleted
            judged += 1
            key = (path.stem, *centre(square))
            if judged == 1:
                predicted = re.search(r"\((.+)\?\)$", square["properties"]["name"]).group(1)
                classification = {"name": predicted, "color": square["properties"]["color"]}
                expected[key] = predicted.casefold()
            elif judged == 2:
                classification = {"name": "Ignore*", "color": [180, 180, 180]}
            else:
                classification = {"name": true_class, "color": [200, 0, 200]}
                expected[key] = true_class.casefold()
            kept.append({**square, "id": str(uuid.uuid4()),
                         "properties": {**square["properties"], "classification": classification}})
        earlier = json.loads((annotations / path.name).read_text())["features"]
        (annotations / path.name).write_text(json.dumps({"type": "FeatureCollection", "features": earlier + kept}))
    assert judged >= 3, "some queries lie inside the unannotated tissue"
    return expected


def keys(rows: list[dict]) -> set[tuple[str, str, str]]:
    return {(r["slide"], r["x"], r["y"]) for r in rows}


def test_the_readme_walkthrough_runs_as_written(tmp_path, monkeypatch):
    commands = readme_commands()
    assert [c[0] for c in commands] == ["tfrecord_generator.py", "active_learning_train.py", "tfrecord_generator.py",
                                        "active_learning_train.py", "active_learning_train.py",
                                        "tfrecord_generator.py", "active_learning_train.py",
                                        "active_learning_inference.py"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_config.yaml").write_text(yaml.safe_dump(readme_config()))
    for i in range(3):  # step 1: the annotated slides of both labs
        make_slide("lab1/slides", f"a{i}", SIDE, SIDE, regions(i), seed=i, annotations_dir="lab1/annotations")
        make_slide("lab2/slides", f"b{i}", SIDE, SIDE, regions(i), seed=10 + i, stain=TARGET_STAIN,
                   annotations_dir="lab2/annotations")
        write_geojson(f"lab2/annotations/b{i}.geojson", regions(i)[:2])  # two squares left for the pool
    make_slide("new_slides", "new", SIDE, SIDE, regions(5), seed=20, stain=TARGET_STAIN)
    Path("new_slides/new.geojson").unlink()

    def run(step: int, *extra: str) -> None:
        script, *args = commands[step]
        assert SCRIPTS[script]([*args, *SHRINK.get(script, []), *extra]) == 0, commands[step]

    run(0)
    assert {p.name for p in Path("lab1/tiles").iterdir()} >= {"a0.tfrecord", "a0.summary.json",
                                                               "extraction_config.json"}
    run(1, *SOURCE_MODEL)
    assert {"model.keras", "rounds.csv", "labelled.csv", "learning_curve.png"} <= set(
        p.name for p in Path("runs/lab1").iterdir())
    run(2)
    summary = json.loads(Path("lab2/tiles/b0.summary.json").read_text())
    assert summary["tiles_per_class"]["unlabeled"] > 0 and set(summary["coverage"]) == {"tumor", "stroma"}
    run(3)
    simulated = read_csv("runs/lab2_simulated/rounds.csv")
    assert [r["round"] for r in simulated] == ["-1", "0", "1"]
    assert float(simulated[-1]["test_macro_f1"]) > float(simulated[0]["test_macro_f1"]), \
        "fine-tuning with the default optimizer, as written, learns the new lab"
    run(4)
    first = read_csv("runs/lab2/labelled.csv")
    split = Path("runs/lab2/split.json").read_text()
    queries = Path("runs/lab2/queries/round_1")
    assert (queries / "queries.csv").exists() and (queries / "contact_sheet_1.png").exists()

    expected = label_in_qupath(queries, Path("lab2/annotations"))  # step 7, in QuPath

    run(5)
    run(6)
    second = read_csv("runs/lab2/labelled.csv")
    added = {(r["slide"], r["x"], r["y"]): r for r in second if (r["slide"], r["x"], r["y"]) not in keys(first)}
    assert set(added) == set(expected), "the labelled set grows by exactly the squares given a class"
    names = readme_config()["classes"]
    assert {key: names[int(r["label"])]["name"].casefold() for key, r in added.items()} == expected, \
        "a corrected square has its new class, a confirmed one the predicted class"
    assert {r["round"] for r in added.values()} == {"1"}
    assert Path("runs/lab2/split.json").read_text() == split, "the resumed run keeps its split"
    assert Path("runs/lab2/queries/round_2/queries.csv").exists()
    run(7)
    assert {"tissue_map.geojson", "overlay.png", "summary.json"} <= set(p.name for p in Path("maps/new").iterdir())


@pytest.mark.parametrize("step", [3, 4, 6])
def test_the_readme_fine_tuning_commands_give_no_architecture_flags(step):
    """The walk-through must show that the source model brings its architecture."""
    command = readme_commands()[step]
    assert "--weights" in command and not {"--backbone", "--head-units", "--backbone-weights"} & set(command)


def test_the_readme_is_short_and_starts_with_the_workflow():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 500, "details belong in docs/"
    assert lines.index("## Use on your own slides") < 80
