"""Inputs named by hub id (`hf://ORG/NAME[/CONFIG][:SPLIT]`, `ms://ORG/NAME[:SPLIT]`) resolved from the
hubs' own local caches with no network: read into one JSONL file under the pai-distil home, which the
stage's readers and cache key take like a user's file; a missing data set or split is one line."""

from __future__ import annotations

import json
import os

import pytest
from hub_caches import env_hf, hf_dataset, modelscope_repo
from test_cli import assert_one_line_error, cli

from pai_distil.core.readers import read_cot_input, read_problems
from pai_distil.run.submission import cache_key

GSM = [{"question": "Tom has 2 apples and buys 3 more. How many?", "answer": "2 + 3 = 5\n#### 5"},
       {"question": "What is 7 times 6?", "answer": "7 * 6 = 42\n#### 42"}]
OMNI = [{"question": "What is 2+3?", "answer": "5", "thought": "2 and 3 make 5.", "solution": "\\boxed{5}"}]


def dry_run(tmp_path, stage: str, source: str, env: dict) -> dict:
    proc = cli("submit", stage, "--dry-run", "-i", source, home=tmp_path / "home",
               env_extra={**env, "MODELSCOPE_ENDPOINT": "http://127.0.0.1:9"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_hf_problems_from_the_datasets_cache(tmp_path):
    cache = tmp_path / "hf"
    hf_dataset(cache, "openai/gsm8k", "main", {"train": GSM[:1], "test": GSM})
    spec = dry_run(tmp_path, "generate", "problems=hf://openai/gsm8k/main:test", env_hf(cache))
    path = spec["inputs"]["problems"]
    assert path.startswith(str(tmp_path / "home" / "sources" / "hf" / "openai" / "gsm8k"))
    rows = read_problems(path)
    assert [(r["problem"], r["answer"]) for r in rows] == [(GSM[0]["question"], "5"), (GSM[1]["question"], "42")]
    assert rows[0]["source"] == "gsm8k"
    again = dry_run(tmp_path, "generate", "problems=hf://openai/gsm8k/main:test", env_hf(cache))
    assert again["inputs"]["problems"] == path  # read once; the same file is the cache key's input
    train = dry_run(tmp_path, "generate", "problems=hf://openai/gsm8k/main", env_hf(cache))  # default split
    assert [r["problem"] for r in read_problems(train["inputs"]["problems"])] == [GSM[0]["question"]]


def test_hf_cots_from_the_datasets_cache(tmp_path):
    cache = tmp_path / "hf"
    hf_dataset(cache, "org/omni", "default", {"train": OMNI})
    spec = dry_run(tmp_path, "slow-thinking", "cots=hf://org/omni", env_hf(cache))
    (row,) = read_cot_input(spec["inputs"]["cots"])
    assert (row["problem"], row["thought"], row["solution"], row["answer"]) == ("What is 2+3?", "2 and 3 make 5.",
                                                                                 "\\boxed{5}", "5")


@pytest.mark.parametrize("source, fragments", [
    ("problems=hf://openai/gsm8k/main:validation", ["input 'problems'", 'split "validation"', "'train', 'test'"]),
    ("problems=hf://openai/nothing", ["input 'problems'", "hf://openai/nothing cannot be read"]),
    ("problems=hf://not a/hub id", ["hf://ORG/NAME[/CONFIG][@REVISION][:SPLIT]"]),
    ("problems=ms://org/missing", ["ms://org/missing is not in the ModelScope cache", "MODELSCOPE_CACHE"]),
])
def test_missing_data_sets_and_splits_are_one_line(tmp_path, source, fragments):
    cache = tmp_path / "hf"
    hf_dataset(cache, "openai/gsm8k", "main", {"train": GSM[:1], "test": GSM})
    proc = cli("submit", "generate", "--dry-run", "-i", source, home=tmp_path / "home",
               env_extra={**env_hf(cache), "MODELSCOPE_CACHE": str(tmp_path / "ms"),
                          "MODELSCOPE_ENDPOINT": "http://127.0.0.1:9"})  # a closed port: nothing leaves the machine
    assert_one_line_error(proc, *fragments)


def test_ms_problems_and_cots_from_the_modelscope_cache(tmp_path):
    cache = tmp_path / "ms"
    modelscope_repo(cache, "modelscope/gsm8k", "dataset", {
        "configuration.json": "{}", "README.md": "# gsm8k",
        "data/train-00000-of-00001.jsonl": "".join(json.dumps(r) + "\n" for r in GSM[:1]),
        "data/test-00000-of-00001.jsonl": "".join(json.dumps(r) + "\n" for r in GSM)})
    modelscope_repo(cache, "org/omni", "dataset", {"omni.jsonl": json.dumps(OMNI[0]) + "\n"})
    env = {"MODELSCOPE_CACHE": str(cache)}
    test = dry_run(tmp_path, "generate", "problems=ms://modelscope/gsm8k:test", env)["inputs"]["problems"]
    assert [r["answer"] for r in read_problems(test)] == ["5", "42"]
    train = dry_run(tmp_path, "generate", "problems=ms://modelscope/gsm8k", env)["inputs"]["problems"]
    assert [r["answer"] for r in read_problems(train)] == ["5"]
    (row,) = read_cot_input(dry_run(tmp_path, "slow-thinking", "cots=ms://org/omni", env)["inputs"]["cots"])
    assert row["thought"] == "2 and 3 make 5."


def test_a_changed_data_set_is_a_new_cache_key(tmp_path, monkeypatch):
    from pai_distil.core.config import validate
    from pai_distil.core.stages import get_stage
    from pai_distil.run import sources

    monkeypatch.setenv("PAI_DISTIL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    stage = get_stage("generate")
    config = validate(stage.config, {}, "test")
    keys = []
    for rows in (GSM, GSM[:1]):
        modelscope_repo(tmp_path / "ms", "org/set", "dataset", {"train.jsonl": "".join(json.dumps(r) + "\n" for r in rows)})
        path = sources.materialise("ms://org/set")
        keys.append(cache_key("generate", config, {"problems": str(path)}))
    assert keys[0] != keys[1]
    assert os.path.basename(path) == "set.jsonl"
