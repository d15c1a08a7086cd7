"""Random-weights provenance: a marker at a builder's output root flags every model under it."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.provenance import MARKER, random_weight_models, random_weights_flags, write_random_weights_marker


def test_models_under_a_marked_folder_are_flagged_hub_ids_and_unmarked_paths_are_not(tmp_path: Path):
    built = tmp_path / "models/tiny"
    (built / "sd/unet").mkdir(parents=True)
    (built / "sam").mkdir()
    (built / "sam/sam_vit_b.pth").write_bytes(b"")
    released = tmp_path / "models/released/sd"
    released.mkdir(parents=True)
    assert random_weights_flags([built / "sd", released]) == []      # no marker written yet
    write_random_weights_marker(built, "demo_models", 0)
    assert (built / MARKER).is_file()
    paths = [str(built / "sd/unet"), "CompVis/stable-diffusion-v1-4", str(released),
             str(built / "sam/sam_vit_b.pth"), str(built / "sd/unet"), None, str(tmp_path / "missing")]
    assert random_weight_models(paths) == [str(built / "sd/unet"), str(built / "sam/sam_vit_b.pth")]
    [flag] = random_weights_flags(paths)
    assert flag.startswith("random_weights: ") and str(released) not in flag
    assert random_weights_flags([released, "CompVis/stable-diffusion-v1-4"]) == []
