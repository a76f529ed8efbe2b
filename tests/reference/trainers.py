"""The tiny trainer the trainer-level tests share: PGPOTrainer on the tiny random Qwen2.5-VL (real tokenizer), one
algorithm's preset at test size (:func:`pgpo.small_preset.small_preset`), a deterministic non-constant reward and
four one-colour images; plus the parameter snapshot and distance the equivalence tests compare runs with."""

import copy
import functools

from datasets import Dataset
from PIL import Image

COLOURS = [(255, 0, 0), (0, 160, 0), (0, 0, 255), (240, 200, 0)]


def colour_dataset(n=8):
    images = [Image.new("RGB", (56, 56), COLOURS[i % 4]) for i in range(n)]
    prompts = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}] for _ in range(n)
    ]
    return Dataset.from_dict({"prompt": prompts, "image": images, "answer": ["x"] * n})


def length_reward(completions, **kwargs):
    """Deterministic, non-constant reward in [0, 1] so that groups have non-zero advantages (and pass DAPO's filter)."""
    return [float(sum(map(ord, c[0]["content"])) % 5) / 4 for c in completions]


@functools.cache
def _built_tiny_qwen():
    from pgpo.models.tiny_qwen import build_tiny_qwen25vl

    return build_tiny_qwen25vl(seed=0)


def tiny_qwen():
    """``build_tiny_qwen25vl(seed=0)``'s (model, processor): a copy of the model built once per session (building it
    takes ~2 s, almost all of a trainer's construction; copying it 0.1 s) and the one processor (trainers only read
    it)."""
    model, processor = _built_tiny_qwen()
    return copy.deepcopy(model), processor


TEST_SIZE = {  # one optimizer step of two groups of two 4-token answers, on the CPU
    "use_cpu": True,
    "seed": 0,
    "per_device_train_batch_size": 2,
    "num_generations": 2,
    "max_completion_length": 4,
    "max_steps": 1,
    "learning_rate": 1e-2,
}


def tiny_preset(output_dir, algorithm="pgpo", **options):
    """``algorithm``'s preset at :data:`TEST_SIZE` (:func:`pgpo.small_preset.small_preset`), ``options`` over it."""
    from pgpo.small_preset import small_preset

    return small_preset(algorithm, **{**TEST_SIZE, "output_dir": str(output_dir), **options})


def make_trainer(tmp_path, algorithm="pgpo", model=None, **overrides):
    """PGPOTrainer of ``algorithm``'s preset on ``model`` (model, processor; default: :func:`tiny_qwen`): groups of
    4 answers of 8 tokens, 2 steps at lr 1e-3, ``overrides`` over them."""
    from pgpo.trainer import PGPOTrainer

    model, processor = tiny_qwen() if model is None else model
    sizes = {"per_device_train_batch_size": 4, "num_generations": 4, "max_completion_length": 8, "max_steps": 2}
    args = tiny_preset(tmp_path, algorithm, **{**sizes, "learning_rate": 1e-3, **overrides})
    return PGPOTrainer(
        model=model, reward_funcs=length_reward, args=args, train_dataset=colour_dataset(), processing_class=processor
    )


def final_params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def max_diff(a, b):
    return max((a[n] - b[n]).abs().max().item() for n in a)
