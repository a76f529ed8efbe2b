"""The options of ``pgpo tasks`` (:class:`TasksConfig`) and the example images it can save (:func:`save_examples`);
the chance table itself is :mod:`pgpo.tasks.chance`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pgpo.tasks.families import DEFAULT_FAMILIES, FAMILIES, family_names
from pgpo.tasks.generate import DEFAULT_SIZE, generate


@dataclass
class TasksConfig:
    """Options of ``pgpo tasks``: print the chance table (and optionally save one example image per family)."""

    n_train: int = field(default=4000, metadata={"help": "train samples in all (spread over the families)"})
    n_test: int = field(default=2000, metadata={"help": "test samples in all"})
    seed: int = field(default=0, metadata={"help": "seed of the samples"})
    size: int = field(default=DEFAULT_SIZE, metadata={"help": "image side in pixels"})
    families: list[str] = field(
        default_factory=lambda: list(DEFAULT_FAMILIES),
        metadata={"help": "task families, comma- or space-separated; 'all' for every family"},
    )
    easy_vqa: bool = field(
        default=False, metadata={"help": "also report the easy-VQA adapter (balanced, at most 12000/3000)"}
    )
    save_examples: str | None = field(
        default=None, metadata={"help": "write one tasks_<family>.png per family into this folder"}
    )

    def __post_init__(self):
        self.families = list(family_names(self.families))
        for name in ("n_train", "n_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")


def save_examples(
    out_dir: str | Path, families=tuple(FAMILIES), size: int = DEFAULT_SIZE, seed: int = 0, log=print
) -> list[Path]:
    """Write ``tasks_<family>.png`` (one test-split example each) and return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fam in families:
        s = generate(fam, 1, seed, size, split="test")[0]
        path = out / f"tasks_{fam}.png"
        s["image"].save(path)
        log(f"{path}: {s['question']} -> {s['answer']}   (choices {s['choices']})")
        paths.append(path)
    return paths
