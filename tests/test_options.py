"""Options declared once: the flags derived from the dataclasses, the
configuration file's sections, the order in which values override each
other, and the preset that reproduces the original code."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import active_learning_inference
import active_learning_train
from tests.conftest import ROOT
from utils.common.config import Config, ConfigError, load_config, read_settings
from utils.common.options import declared, resolve_options
from utils.learning.train_options import TrainOptions
from utils.maps.inference_options import InferenceOptions

#: The original code's settings, read from its active_learning_train.py and
#: my_constants.py (Biomedical-Data-Analysis-Laboratory/ActiveLearning_TissueSegmentation).
ORIGINAL_TRAINING = {
    "optimizer": "sgd", "learning_rate": 1.5e-5, "batch_size": 128, "epochs": 10, "patience": 3,
    "initial": 25000, "rounds": 4, "budget": 20000, "strategy": "class_ratio", "slide_class_cap": 1000,
    "cap_eval_per_slide": True, "eval_cap": 2500, "augment": False, "model_selection": "val_loss", "repeats": 4,
    "oracle_classes": True, "stain_jitter": "none", "adapt_bn": False, "semi_supervised": "none",
    "colour_jitter": False, "repeats_share_data": True,
}
ORIGINAL_SPEC = {"backbone": "vgg16", "head_units": 4096, "dropout": 0.4, "input_scaling": "raw"}
#: Annotation names of the paper's database and the class the original code gave them.
ORIGINAL_NAMES = {"Blood": "blood", "Cauterized": "damaged", "Blurry": "damaged", "Folding": "damaged",
                  "Others": "damaged", "Muscle": "muscle", "Lamina propria": "stroma", "Grade 2 High": "urothelium",
                  "CIS": "urothelium", "Dysplasia": "urothelium", "Normal urothelium": "urothelium",
                  "Flat lesion": "urothelium", "Variant histology": "urothelium"}


def train_args(*argv: str, data: Path = Path("no-data")) -> list[str]:
    return ["--data", str(data), "--output", "run", *argv]


def test_the_original_preset_resolves_to_the_original_codes_values():
    args = active_learning_train.parse_args(train_args("--config", str(ROOT / "presets" / "original.yaml")))
    options, config = active_learning_train.resolve(args)
    assert {key: getattr(options, key) for key in ORIGINAL_TRAINING} == ORIGINAL_TRAINING
    assert dataclasses.asdict(options.spec) == ORIGINAL_SPEC
    assert config.uncapped_classes == ["blood"], "the original never capped blood"
    # Six outputs with background first, as the original's to_categorical(..., 6), but background never trained.
    assert config.class_names == ["background", "blood", "damaged", "muscle", "stroma", "urothelium"]
    assert config.annotation_role("Background") == "ignore" and config.annotation_role("Glass") == "ignore"
    assert {name: config.class_names[config.class_for_annotation(name)] for name in ORIGINAL_NAMES} == ORIGINAL_NAMES
    assert (config.magnifications, config.tile_size) == ([40.0, 10.0, 2.5], 128)
    assert (config.tissue_method, config.tissue_fraction, config.region_fraction) == ("green", 0.7, 0.7)
    # The defaults differ exactly where docs/original.md's table says they do.
    default_options, default_config = active_learning_train.resolve(active_learning_train.parse_args(train_args()))
    differing = {key for key in ORIGINAL_TRAINING if getattr(default_options, key) != ORIGINAL_TRAINING[key]}
    assert differing == {"cap_eval_per_slide", "eval_cap", "augment", "model_selection", "repeats", "oracle_classes",
                         "strategy", "repeats_share_data", "optimizer", "learning_rate"}
    assert default_options.spec.scaling == "caffe", "VGG16's own: BGR minus the ImageNet means"
    assert (default_config.tissue_method, default_config.tissue_fraction) == ("otsu", 0.5)


def test_a_human_round_asks_for_two_contact_sheet_pages_and_a_simulated_one_for_the_papers_budget():
    from utils.learning.queries import SHEET_CELLS
    from utils.learning.train_options import REVIEW_BATCH

    assert REVIEW_BATCH == 2 * SHEET_CELLS
    human = TrainOptions(data=Path("d"), output=Path("o"), query_only=True)
    assert (human.budget, TrainOptions(data=Path("d"), output=Path("o")).budget) == (REVIEW_BATCH, 20000)
    preset = active_learning_train.parse_args(train_args("--config", str(ROOT / "presets" / "original.yaml")))
    assert active_learning_train.resolve(preset)[0].budget == 20000, "the preset keeps the paper's"


def test_every_option_is_a_flag_whose_default_is_the_dataclass_field():
    args = active_learning_train.parse_args(train_args())
    options, _ = active_learning_train.resolve(args)
    plain = TrainOptions(data=Path("no-data"), output=Path("run"))
    for field in declared(TrainOptions):
        assert hasattr(args, field.name), f"no flag for {field.name}"
        assert getattr(args, field.name) is None, f"--{field.name} must mean 'not given' when absent"
        if field.name not in ("backbone", "head_units", "input_scaling", "budget"):  # resolved in the options
            assert getattr(options, field.name) == getattr(plain, field.name) == field.default
    inference = active_learning_inference.parse_args(["--slides", "s", "--model", "m", "--output", "o"])
    for field in declared(InferenceOptions):
        assert getattr(inference, field.name) is None


def test_help_shows_the_dataclass_defaults(capsys):
    with pytest.raises(SystemExit):
        active_learning_train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in (("--budget", "20000, the paper's, in simulation; 48, what a pathologist reviews in one sitting, with "
                                       "--query-only"), ("--initial", 25000),
                          ("--learning-rate", 0.0001), ("--slide-class-cap", 1000), ("--strategy", "random")):
        start = text.rindex(flag + " ")
        assert f"(default: {default})" in text[start:start + 400], flag


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path):
    settings = tmp_path / "experiment.yaml"
    settings.write_text("tile_size: 64\ntraining:\n  rounds: 2\n  budget: 7\n  strategy: entropy\n"
                        "  split_fractions: [0.6, 0.2, 0.2]\n  weights: null\n"
                        "inference:\n  batch_size: 64\n  smooth: true\n")
    args = active_learning_train.parse_args(train_args("--config", str(settings), "--rounds", "3"))
    options, config = active_learning_train.resolve(args)
    assert (options.rounds, options.budget, options.strategy, options.epochs) == (3, 7, "entropy", 10)
    assert options.split_fractions == (0.6, 0.2, 0.2) and config.tile_size == 64
    inference_args = active_learning_inference.parse_args(
        ["--slides", "s", "--model", "m", "--output", "o", "--config", str(settings), "--batch-size", "32"])
    from utils.common.config import read_config_file

    resolved = resolve_options(InferenceOptions, inference_args, read_config_file(settings, "inference"),
                               "inference", output=Path("o"), model_path=Path("m"))
    assert (resolved.batch_size, resolved.smooth) == (32, True)


@pytest.mark.parametrize("section, message", [
    ("training:\n  round: 2\n", "unknown keys ['round']"),
    ("training:\n  rounds: two\n", "rounds must be of type int, not 'two'"),
    ("training:\n  learning_rate: [1]\n", "learning_rate must be of type float"),
    ("training:\n  split_fractions: [0.5, 0.6, 0.1]\n", "split fractions must be three non-negative numbers"),
    ("training:\n  epochs: 0\n", "epochs must be at least 1"),
    ("training: 3\n", "section training must be a mapping"),
    ("trainng:\n  rounds: 2\n", "unknown configuration keys ['trainng']"),
    ("uncapped_classes: [platelets]\n", "uncapped_classes names unknown class 'platelets'"),
])
def test_a_wrong_setting_in_the_file_is_one_clear_error(tmp_path, capsys, section, message):
    settings = tmp_path / "wrong.yaml"
    settings.write_text(section)
    assert active_learning_train.main(train_args("--config", str(settings), data=tmp_path)) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_dataset_names_live_in_the_configuration():
    config = load_config()
    assert config.uncapped_classes == ["blood"] and config.background_index == 0
    kather = load_config(ROOT / "experiments" / "kather.yaml")
    assert kather.uncapped_classes == [] and kather.class_names[kather.background_index] == "background"
    assert Config(background_class=None).background_index is None
    with pytest.raises(ConfigError, match="uncapped_classes names unknown class 'platelets'"):
        load_config(uncapped_classes=["platelets"])


def test_a_class_list_of_ones_own_keeps_the_paper_exemption_only_where_it_has_the_class():
    """Also how configurations saved before uncapped_classes existed behaved."""
    two = [{"name": "tumour", "color": "#FF0000"}, {"name": "stroma", "color": "#FF00FF"}]
    assert load_config(classes=two, rules=[], priority=[]).uncapped_classes == []
    assert load_config(classes=[*two, {"name": "blood", "color": "#800000"}], rules=[],
                       priority=[]).uncapped_classes == ["blood"]
    saved = Config().to_dict()
    del saved["uncapped_classes"]
    assert load_config(**saved).uncapped_classes == ["blood"]
    assert load_config(classes=two, rules=[], priority=[], uncapped_classes=["stroma"]).uncapped_classes == ["stroma"]


def test_extraction_options_come_from_the_dataclass_and_the_file_is_read_once(tmp_path, monkeypatch):
    import tfrecord_generator
    from utils.common import cli
    from utils.tiles.extract_options import ExtractOptions

    settings = tmp_path / "lab.yaml"
    settings.write_text("tile_size: 64\nextraction:\n  encoding: jpeg\n  unlabeled: true\n  workers: 3\n")
    reads = []
    monkeypatch.setattr(cli, "read_settings", lambda path: reads.append(path) or read_settings(path))
    bare = tfrecord_generator.parse_args(["--slides", "s", "--output", "o"])
    for field in declared(ExtractOptions):
        assert getattr(bare, field.name) is None, f"--{field.name.replace('_', '-')} means 'not given' when absent"
    args = tfrecord_generator.parse_args(["--slides", "s", "--output", "o", "--config", str(settings),
                                          "--workers", "2"])
    keys, section = cli.start(args, "extraction")
    options = resolve_options(ExtractOptions, args, section, "extraction", output=Path("o"))
    config = cli.resolve_config(args, keys)
    assert (options.encoding, options.unlabeled, options.workers, config.tile_size) == ("jpeg", True, 2, 64)
    assert reads == [str(settings)], "one read gives the configuration and the options"
    assert ExtractOptions(output=Path("o")).encoding == "png", "the default stands on the dataclass only"
    with pytest.raises(ConfigError, match="encoding"):
        ExtractOptions(output=Path("o"), encoding="tiff")
    train_args_ = active_learning_train.parse_args(train_args("--config", str(settings)))
    active_learning_train.resolve(train_args_)
    assert len(reads) == 2, "training reads the file once too"


def test_shipped_presets_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("original", "presets/original.yaml"):
        options, config = active_learning_train.resolve(active_learning_train.parse_args(train_args("--config", name)))
        assert (options.strategy, config.tissue_method) == ("class_ratio", "green"), name
    _, config = active_learning_train.resolve(active_learning_train.parse_args(
        train_args("--config", "experiments/kather.yaml")))
    assert "adipose" in config.class_names
    with pytest.raises(ConfigError, match="no shipped preset of that name \\(presets: original\\)"):
        active_learning_train.resolve(active_learning_train.parse_args(train_args("--config", "orignal")))
