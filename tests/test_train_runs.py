"""Training's bookkeeping without a training run: the batch split, run folders, resume plans,
the fp16 loss-scaler state in checkpoints, side work that fails without ending a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.core.config import ConfigError
from pipeline.train.checkpoints import list_checkpoints, load_scaler, read_state, save_checkpoint, scaler_state
from pipeline.train.config import BatchLayout, TrainConfig
from pipeline.train.runs import RunIdentity, plan_resume, prune_other_runs


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    def save_pretrained(self, folder: Path, safe_serialization: bool = True) -> None:
        folder.mkdir(parents=True)
        (folder / "weights.json").write_text(json.dumps(self.w.tolist()))


def _save(folder: Path, step: int, ident: RunIdentity, scaler=None) -> Path:
    return save_checkpoint(folder, step, _Tiny(), None, {**ident.state(), "scaler": scaler_state(scaler)}, keep=2)


@pytest.mark.parametrize("processes, per_process, accumulation", [(1, 1, 4), (4, 1, 1), (2, 2, 1), (1, 2, 2)])
def test_the_global_batch_splits_into_processes_and_accumulation(processes, per_process, accumulation):
    cfg = TrainConfig(global_batch_size=4, train_batch_size=per_process)
    layout = BatchLayout.of(cfg, processes)
    assert layout.accumulation == accumulation
    # every position of a step is taken exactly once, whatever the layout
    taken = sorted(p for a in range(accumulation) for r in range(processes) for p in layout.positions(3, a, r))
    assert taken == list(range(12, 16))


def test_a_split_the_processes_cannot_make_is_an_error():
    with pytest.raises(ConfigError, match="cannot be split over 8 process"):
        BatchLayout.of(TrainConfig(global_batch_size=4, train_batch_size=1), 8)
    with pytest.raises(ConfigError, match="not a multiple of train.train_batch_size"):
        TrainConfig(global_batch_size=3, train_batch_size=2).validate()


def test_settings_that_do_not_change_training_keep_the_run_key():
    a = RunIdentity.of(TrainConfig(), "data", "code1")
    assert RunIdentity.of(TrainConfig(gradient_checkpointing=False, train_batch_size=2, max_train_steps=9),
                          "data", "code2").key == a.key
    assert RunIdentity.of(TrainConfig(lambda_token=0.5), "data", "code1").key != a.key
    assert RunIdentity.of(TrainConfig(mixed_precision="bf16"), "data", "code1").key != a.key
    assert RunIdentity.of(TrainConfig(), "other data", "code1").key != a.key


def test_resume_plans_never_remove_a_checkpoint(tmp_path: Path):
    root = tmp_path / "checkpoints"
    old = RunIdentity.of(TrainConfig(), "data", "code1")
    _save(root / old.key, 1, old)
    _save(root / old.key, 2, old)
    files = set(root.rglob("*"))
    # same run, new code: resumes from the newest and says so
    plan = plan_resume(root, RunIdentity.of(TrainConfig(), "data", "code2"), "auto")
    assert plan.checkpoint == root / old.key / "step-000002" and plan.code_change == {"from": "code1", "to": "code2"}
    # other settings: a folder of their own
    other = RunIdentity.of(TrainConfig(lambda_token=0.5), "data", "code1")
    assert plan_resume(root, other, "auto").folder == root / other.key
    # never: a new attempt beside the old one
    fresh = plan_resume(root, old, "never")
    assert fresh.folder == root / f"{old.key}.1" and fresh.checkpoint is None
    assert set(root.rglob("*")) == files


def test_a_checkpoint_of_other_settings_in_a_run_folder_stops_naming_them(tmp_path: Path):
    root = tmp_path / "checkpoints"
    fp32 = RunIdentity.of(TrainConfig(), "data", "code")
    bf16 = RunIdentity.of(TrainConfig(mixed_precision="bf16"), "data", "code")
    _save(root / fp32.key, 1, bf16)  # moved there by hand
    with pytest.raises(ConfigError, match="mixed_precision: 'bf16' -> 'fp32'.*nothing was deleted"):
        plan_resume(root, fp32, "auto")
    assert list_checkpoints(root / fp32.key)


def test_prune_removes_only_other_runs(tmp_path: Path):
    root = tmp_path / "checkpoints"
    mine, other = (RunIdentity.of(TrainConfig(lambda_token=v), "d", "c") for v in (1.0, 2.0))
    _save(root / mine.key, 1, mine)
    _save(root / other.key, 1, other)
    assert prune_other_runs(root, mine.key) == [root / other.key]
    assert [p.name for p in root.iterdir()] == [mine.key] and list_checkpoints(root / mine.key)


def test_the_fp16_loss_scaler_state_is_saved_and_restored(tmp_path: Path):
    ident = RunIdentity.of(TrainConfig(mixed_precision="fp16"), "d", "c")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=7)
    scaler._lazy_init_scale_growth_tracker(torch.device("cpu"))
    scaler.update(new_scale=123.0)
    path = _save(tmp_path / ident.key, 3, ident, scaler)
    assert read_state(path)["scaler"]["scale"] == 123.0
    restored = torch.amp.GradScaler("cpu")
    assert load_scaler(path, restored)
    assert restored.state_dict() == scaler.state_dict()


def test_side_work_that_fails_is_recorded_and_the_run_goes_on():
    from accelerate import Accelerator

    from pipeline.train.side_work import SideWork

    class Broken:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise OSError(f"image {i} vanished")

    side = SideWork(TrainConfig(), Accelerator(cpu=True), models=None, capture=None, dataset=Broken(),
                    heldout_set=Broken(), resolutions=[4, 8], heat_indices=[0])
    assert side.heldout(5) is None and side.heatmap_rows(5) is None
    assert len(side.errors) == 2 and all(e.startswith("step 5: ") for e in side.errors)


def test_the_summary_states_paper_mode_counts_beside_the_official_list(tmp_path: Path):
    import pyarrow as pa

    from pipeline.core.tables import write_table
    from pipeline.train.summary import official_ratios

    counts = {"examples": 4480, "supervised_nouns": 13000}
    official = tmp_path / "official.parquet"
    write_table(pa.table({"caption_id": [1], "official_nouns": [["dog"]]}), official)
    coco = tmp_path / "coco.parquet"
    write_table(pa.table({"caption_id": [1], "official_nouns": pa.array([None], pa.list_(pa.string()))}), coco)
    assert official_ratios(official, counts) == {"official_list": {"captions": round(4480 / 4526, 4),
                                                                   "masked_nouns": round(13000 / 13634, 4)}}
    assert official_ratios(coco, counts) == {}
