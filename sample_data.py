"""Generate realistic TAO jobs, the same ones for the same seed.

Tests and benchmarks use these to fill a metrics document the way months of
real use would: many networks and actions, several TAO versions, single and
multi-GPU jobs on a range of GPU models, now and then a mixed machine.

    from sample_data import sample_jobs
    from labeled import record_jobs
    record_jobs(store, sample_jobs(500, seed=7))
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from labeled import Job

NETWORKS = (
    "classification_pyt",
    "classification_tf2",
    "dino",
    "grounding_dino",
    "mask_grounding_dino",
    "deformable_detr",
    "rtdetr",
    "segformer",
    "visual_changenet",
    "centerpose",
    "pointpillars",
    "ocdnet",
    "ocrnet",
    "action_recognition",
    "pose_classification",
    "re_identification",
    "mal",
    "bevfusion",
    "efficientdet_tf2",
    "yolo_v4",
    "detectnet_v2",
    "faster_rcnn",
    "unet",
    "lprnet",
    "resnet50",
)
# Actions with a relative frequency and a typical duration range in seconds.
ACTIONS = (
    ("train", 30, (600, 172_800)),
    ("evaluate", 20, (30, 3_600)),
    ("inference", 20, (10, 1_800)),
    ("export", 12, (20, 600)),
    ("gen_trt_engine", 8, (60, 2_400)),
    ("dataset_convert", 5, (30, 7_200)),
    ("prune", 2, (60, 1_800)),
    ("retrain", 2, (600, 86_400)),
    ("distill", 1, (1_800, 86_400)),
)
VERSIONS = (("5.0.0", 2), ("5.2.0", 3), ("5.3.0", 6), ("5.5.0", 8), ("6.0.0", 5))
GPU_MODELS = (
    ("NVIDIA A100-SXM4-80GB", 20),
    ("NVIDIA A100-PCIE-40GB", 6),
    ("NVIDIA H100 80GB HBM3", 14),
    ("NVIDIA GH200 480GB", 2),
    ("NVIDIA L40S", 6),
    ("NVIDIA L4", 4),
    ("NVIDIA RTX A6000", 8),
    ("NVIDIA GeForce RTX 4090", 7),
    ("NVIDIA GeForce RTX 3090", 4),
    ("NVIDIA A10G", 5),
    ("Tesla V100-SXM2-32GB", 4),
    ("Tesla T4", 5),
    ("NVIDIA B200", 2),
    ("Jetson AGX Orin", 2),
)
GPU_COUNTS = ((1, 50), (2, 18), (4, 16), (8, 14), (0, 2))
CLIENT_TYPES = (("container", 70), ("api", 20), ("sdk", 10))


def _pick(rng: random.Random, choices: tuple[tuple, ...]) -> tuple:
    """Pick a row of (value, weight, ...) rows by weight."""
    return rng.choices(choices, weights=[row[1] for row in choices])[0]


def sample_job(rng: random.Random) -> Job:
    """Draw one realistic job from rng."""
    action, _, (shortest, longest) = _pick(rng, ACTIONS)
    count = _pick(rng, GPU_COUNTS)[0]
    gpus = [_pick(rng, GPU_MODELS)[0]] * count
    if count > 1 and rng.random() < 0.05:
        # A mixed machine: the last GPU differs.
        gpus[-1] = _pick(rng, GPU_MODELS)[0]
    success = rng.random() < 0.85
    return Job(
        network=rng.choice(NETWORKS),
        action=action,
        version=_pick(rng, VERSIONS)[0],
        success=success,
        user_error=not success and rng.random() < 0.5,
        time_lapsed=rng.randint(shortest, longest),
        gpu=tuple(gpus),
        client_type=_pick(rng, CLIENT_TYPES)[0],
        automl_triggered=action == "train" and rng.random() < 0.1,
    )


def sample_jobs(n: int, seed: int = 0) -> Iterator[Job]:
    """Yield n realistic jobs; the same seed always gives the same jobs."""
    rng = random.Random(seed)
    for _ in range(n):
        yield sample_job(rng)
