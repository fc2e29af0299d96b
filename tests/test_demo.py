"""The demo end to end at its smallest size: the README's first command works."""

from __future__ import annotations

import demo


def test_demo_runs_end_to_end_and_maps_the_held_out_slide(tmp_path, capsys):
    assert demo.main(["--quick", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "maps" / "heldout_target"
    for name in ("tissue_map.png", "tissue_map_legend.png", "overlay.png", "probabilities.npz",
                 "tissue_map.geojson", "summary.json"):
        assert (folder / name).exists(), name
    assert (tmp_path / "runs" / "target" / "learning_curve.png").exists()
    assert "source model on the target test slides: macro F1" in out
    size = demo.SIZES["quick"]
    regions = demo.held_out_layout(size["side"])
    accuracy = demo.map_accuracy(folder, regions, size["side"], size["tile"])
    assert accuracy >= 0.8, f"map accuracy on the known regions {accuracy:.3f}"
    # A rerun reuses everything: no slide is extracted or mapped again, no round trained again.
    assert demo.main(["--quick", "--output", str(tmp_path)]) == 0
    again = capsys.readouterr().out
    counts = [line for line in again.splitlines() if " slide(s): " in line]
    assert len(counts) == 3 and all(": 0 done, " in line and line.endswith(", 0 failed") for line in counts), counts
    assert "round 0:" not in again
