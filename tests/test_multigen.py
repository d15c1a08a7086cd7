"""MultiGen: official prompt files, schema errors, prompt sampling, seeds, and MG-k scoring."""

from __future__ import annotations

import json

import pytest

from pipeline.evaluate.multigen import (
    Prompt,
    image_seed,
    make_prompts,
    read_prompts,
    score,
)


@pytest.mark.parametrize(
    "name", ["coco_obj_comp_5_1k.json", "ade20k_obj_comp_5_1k.json"]
)
def test_official_files_load(shared_dir, name):
    prompts = read_prompts(shared_dir / "multigen" / name)
    assert len(prompts) == 1000
    assert len({p.prompt_id for p in prompts}) == 1000
    assert all(len(p.categories) == 5 for p in prompts)
    assert all(p.text.startswith("a photo of a ") for p in prompts)


def _entry(uid=0, cats=("cat", "dog"), text=None, num=None):
    entry = {"unique_id": uid, "num_objects": len(cats) if num is None else num}
    for k, c in enumerate(cats, 1):
        entry[f"obj_{k}_attributes"] = [c]
    entry["text"] = (
        text if text is not None else "a photo of a " + " and a ".join(cats) + "."
    )
    return entry


def _write(tmp_path, data):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(data))
    return path


def test_read_prompts_valid(tmp_path):
    path = _write(tmp_path, [_entry(0), _entry(7, ("car", "bus"))])
    assert read_prompts(path) == [
        Prompt(0, "a photo of a cat and a dog.", ("cat", "dog")),
        Prompt(7, "a photo of a car and a bus.", ("car", "bus")),
    ]


def _missing_text():
    e = _entry(0)
    del e["text"]
    return e


@pytest.mark.parametrize(
    "data, message",
    [
        ({"unique_id": 0}, "expected a JSON list"),
        ([_entry(0), _missing_text()], r"entry 1: missing key 'text'"),
        ([_entry(0, num=3)], r"entry 0: num_objects=3 disagrees"),
        (
            [_entry(0, cats=("cat", ""), text="a photo of a cat.")],
            r"entry 0: obj_2_attributes has an empty category",
        ),
        (
            [_entry(0), _entry(1), _entry(0)],
            r"entry 2: duplicate unique_id 0 \(also entry 0\)",
        ),
        (
            [_entry(0, text="a photo of a cat and a bird.")],
            r"entry 0: text .* does not mention category 'dog'",
        ),
    ],
    ids=[
        "not-list",
        "missing-key",
        "num-objects",
        "empty-category",
        "duplicate-id",
        "text-mention",
    ],
)
def test_read_prompts_errors(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        read_prompts(_write(tmp_path, data))


def test_make_prompts_deterministic_and_template():
    cats = [f"c{i}" for i in range(20)]
    a = make_prompts(cats, 50, seed=3)
    assert a == make_prompts(cats, 50, seed=3)
    assert a != make_prompts(cats, 50, seed=4)
    assert [p.prompt_id for p in a] == list(range(50))
    for p in a:
        assert len(set(p.categories)) == 5 and set(p.categories) <= set(cats)
        A, B, C, D, E = p.categories
        assert p.text == f"a photo of a {A}, a {B}, a {C}, a {D}, and a {E}."
    (two,) = make_prompts(["apple", "bear"], 1, seed=0, k=2)
    A, B = two.categories
    assert two.text == f"a photo of a {A} and a {B}."
    with pytest.raises(ValueError):
        make_prompts(["a", "b"], 1, seed=0, k=3)


def test_image_seed_stable_and_distinct():
    assert image_seed(0, 1, 2) == image_seed(0, 1, 2)
    seeds = {
        image_seed(b, p, i) for b in range(3) for p in range(20) for i in range(10)
    }
    assert len(seeds) == 600
    assert all(0 <= s < 2**63 for s in seeds)
    assert image_seed(0, 1, 2) != image_seed(0, 2, 1)


PROMPTS = [
    Prompt(0, "p0", ("a", "b", "c", "d", "e")),
    Prompt(1, "p1", ("f", "g", "h", "i", "j")),
]
DETECTIONS = [
    # prompt 0, image 0: a twice, b, c -> {a, b, c}: 3
    (0, 0, "a", 0.9),
    (0, 0, "a", 0.5),
    (0, 0, "b", 0.8),
    (0, 0, "c", 0.3),
    # prompt 0, image 1: z not prompted, b below threshold, c exactly at threshold -> {a, d}: 2
    (0, 1, "a", 0.9),
    (0, 1, "d", 0.2),
    (0, 1, "z", 0.9),
    (0, 1, "b", 0.05),
    (0, 1, "c", 0.1),
    # prompt 1, image 0: f g h i -> 4 (a belongs to the other prompt)
    (1, 0, "f", 0.5),
    (1, 0, "g", 0.5),
    (1, 0, "h", 0.5),
    (1, 0, "i", 0.5),
    (1, 0, "a", 0.9),
    # prompt 1, image 1: no detection at all -> 0
]


def test_score_hand_made():
    # per-index rates: index 0 -> counts (3, 4), index 1 -> counts (2, 0)
    # MG2: (100, 50), MG3: (100, 0), MG4: (50, 0), MG5: (0, 0)
    got = score(DETECTIONS, PROMPTS, images_per_prompt=2)
    assert got == pytest.approx(
        {
            "MG2": 75.0,
            "MG2_std": 25.0,
            "MG3": 50.0,
            "MG3_std": 50.0,
            "MG4": 25.0,
            "MG4_std": 25.0,
            "MG5": 0.0,
            "MG5_std": 0.0,
            "images": 4,
        }
    )


def test_score_threshold_keyword():
    # threshold 0.25: c (0.3) stays, d (0.2) drops -> index 0 counts (3, 4), index 1 counts (1, 0)
    got = score(DETECTIONS, PROMPTS, images_per_prompt=2, threshold=0.25)
    assert got["MG2"] == pytest.approx(50.0) and got["MG2_std"] == pytest.approx(50.0)


def test_score_rejects_bad_detections():
    with pytest.raises(ValueError, match="unknown prompt_id 9"):
        score([(9, 0, "a", 0.9)], PROMPTS, images_per_prompt=2)
    with pytest.raises(ValueError, match="image_index 2"):
        score([(0, 2, "a", 0.9)], PROMPTS, images_per_prompt=2)
    with pytest.raises(ValueError, match="image_index -1"):
        score([(0, -1, "a", 0.9)], PROMPTS, images_per_prompt=2)


def test_visor_prompts_ids_are_stable_and_templates_right():
    from pipeline.evaluate.multigen import visor_prompts

    cats = ["cat", "dog", "bus"]
    full = visor_prompts(cats, None, seed=0)
    assert len(full) == 3 * 2 * 4
    assert full[0].text == "a cat to the left of a dog." and full[0].categories == ("cat", "dog")
    assert full[1].text == "a cat to the right of a dog."
    some = visor_prompts(cats, 5, seed=3)
    assert len(some) == 5 and [p.prompt_id for p in some] == sorted(p.prompt_id for p in some)
    assert all(full[p.prompt_id] == p for p in some)  # a prompt keeps its id whatever n is
    assert some == visor_prompts(cats, 5, seed=3) and some != visor_prompts(cats, 5, seed=4)
    with pytest.raises(ValueError, match="2 distinct"):
        visor_prompts(["cat", "cat"], None, 0)


def test_seed_namespaces_keep_benchmarks_apart():
    assert image_seed(0, 1, 2, "") == image_seed(0, 1, 2)
    assert image_seed(0, 1, 2, "visor") != image_seed(0, 1, 2)
    assert image_seed(0, 1, 2, "visor") != image_seed(0, 1, 2, "fid")


def test_prompts_outside_the_vocabulary_are_recorded_rejects():
    from pipeline.evaluate.prompt_benchmarks import check_vocabulary

    prompts = [Prompt(0, "a photo of a cat and a dog.", ("cat", "dog")),
               Prompt(1, "a photo of a cat and a yak.", ("cat", "yak"))]
    kept, rejects = check_vocabulary(prompts, ["cat", "dog"], "multigen")
    assert kept == prompts[:1]
    assert [(k, r) for k, r, _ in rejects] == [("multigen:1", "category_not_in_vocabulary")]
    assert "yak" in rejects[0][2]
    assert check_vocabulary(prompts, None, "multigen") == (prompts, [])


def test_category_recall_hand_made():
    from pipeline.evaluate.multigen import category_recall

    # a: found in (0,0) twice-detected and (0,1) -> 2/2; b: (0,0) only -> 1/2; c: (0,0) at 0.3 -> 1/2;
    # d: (0,1) -> 1/2; e: never -> 0/2; f, g, h, i: (1,0) only -> 1/2; j: 0/2; z and the other prompt's a: ignored
    rows = {r["category"]: (r["images"], r["found"], r["recall"]) for r in category_recall(DETECTIONS, PROMPTS, 2)}
    assert rows == {"a": (2, 2, 100.0), "b": (2, 1, 50.0), "c": (2, 1, 50.0), "d": (2, 1, 50.0), "e": (2, 0, 0.0),
                    "f": (2, 1, 50.0), "g": (2, 1, 50.0), "h": (2, 1, 50.0), "i": (2, 1, 50.0), "j": (2, 0, 0.0)}
    assert list(rows) == sorted(rows)
