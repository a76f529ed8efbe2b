"""`pgpo train` end to end: CLI + YAML, accelerate with two CPU processes (gloo). Kill and resume: test_resume.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from pgpo.models.tiny_qwen import save_tiny_qwen25vl

    return str(save_tiny_qwen25vl(tmp_path_factory.mktemp("tiny") / "model"))


def train_cmd(tiny_dir, out, *extra):
    return [
        str(BIN / "pgpo"),
        "train",
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        "--model_name_or_path",
        tiny_dir,
        "--output_dir",
        str(out),
        "--lr_scheduler_type",
        "constant",
        *extra,
    ]


def history(out):
    state = json.loads((Path(out) / "trainer_state.json").read_text())
    return {h["step"]: h for h in state["log_history"] if "loss" in h}


def test_help_documents_every_pgpo_option():
    out = subprocess.run([str(BIN / "pgpo"), "train", "--help"], capture_output=True, text=True, env=ENV, check=True)
    from dataclasses import fields

    from trl import GRPOConfig

    from pgpo.config import PGPOConfig

    ours = {f.name for f in fields(PGPOConfig)} - {f.name for f in fields(GRPOConfig)}
    assert ours and all(f"--{name}" in out.stdout for name in ours)
    assert "--algorithm" in out.stdout


def test_accelerate_two_cpu_processes(tiny_dir, tmp_path):
    cmd = [
        str(BIN / "accelerate"),
        "launch",
        "--multi_gpu",  # torchrun-style launcher; with use_cpu the processes talk over gloo
        "--num_processes",
        "2",
        "--main_process_port",
        "29533",
        "-m",
        "pgpo",
        *train_cmd(
            tiny_dir,
            tmp_path / "ddp",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "4",  # one whole group per process: dynamic sampling keeps or drops it there
            "--reward_funcs",
            "tests.fixtures.ds_rewards.spread_by_prompt",
            "--max_sampling_rounds",
            "6",
        )[1:],
    ]
    # two processes on two cores: one thread each, or OpenMP's spinning threads oversubscribe the CPU badly
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gloo" in proc.stderr or "MULTI_CPU" in proc.stderr or (tmp_path / "ddp" / "model.safetensors").exists()
    logs = history(tmp_path / "ddp" / "checkpoint-2")
    assert sorted(logs) == [1, 2] and all("shaping/gated_frac" in h for h in logs.values())
    # dynamic sampling ran its rounds in both processes (collectives in step) and kept groups with spread
    assert all(h["dynamic_sampling/rounds"] >= 1 and 0 < h["dynamic_sampling/kept_frac"] <= 1 for h in logs.values())
    assert "algorithm=pgpo" in proc.stdout and "dynamic_sampling = True" in proc.stdout  # the resolved preset
