"""Name the GPU type in a marketing name and rank GPU architectures.

``gpu_type('NVIDIA A100-SXM4-80GB')`` is ``'A100'``; ``primary_gpu`` picks,
for a job on several GPUs, the type of the newest architecture present.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

UNKNOWN_GPU = "unknown"

# GPU types and generations.  Each row maps GPU types, as gpu_type() spells
# them, to an architecture; ARCHITECTURES lists architectures oldest first.
# A new GPU needs one pattern here; a new architecture one more entry.

ARCHITECTURES = ("pascal", "volta", "turing", "ampere", "ada", "hopper", "blackwell")

GPU_GENERATIONS: tuple[tuple[str, str], ...] = (
    (r"^G?B\d+[A-Z]*$|^RTX50\d0|BLACKWELL$|^THOR$", "blackwell"),
    (r"^G?H\d+[A-Z]*$", "hopper"),
    (r"^L\d+[A-Z]*$|^RTX40\d0|ADA$", "ada"),
    (r"^A\d+[A-Z]*$|^RTXA\d+$|^RTX30\d0|^ORIN$", "ampere"),
    (r"^T\d+$|^RTX20\d0|^RTX[4568]000$|^TITANRTX$|^GTX16\d0", "turing"),
    (r"^V\d+[A-Z]*$|^TITANV$|^XAVIER$", "volta"),
    (r"^P\d+[A-Z]*$|^GTX10\d0|^TITANXP?$", "pascal"),
)

# Words in marketing names that say nothing about the chip.
_BRAND_WORDS = frozenset({"NVIDIA", "TESLA", "GEFORCE", "QUADRO", "JETSON", "AGX"})
# Prefixes that form one type with the word after them: RTX 4090 -> RTX4090.
_JOINED_PREFIXES = frozenset({"RTX", "GTX", "TITAN"})
_JOINED_INFIXES = frozenset({"PRO"})
# Suffixes that tell apart different chips sold under one number.
_KEPT_SUFFIXES = frozenset({"TI", "SUPER", "ADA", "BLACKWELL"})


def gpu_type(name: str) -> str:
    """Return the GPU type in a marketing name: 'NVIDIA A100-SXM4-80GB' -> 'A100'."""
    words = [w for w in re.split(r"[^A-Z0-9]+", name.upper()) if w]
    words = [w for w in words if w not in _BRAND_WORDS]
    if not words or words[0] == "UNKNOWN":
        return UNKNOWN_GPU
    if words[0] not in _JOINED_PREFIXES or len(words) == 1:
        return words[0]
    parts = [words[0]]
    rest = words[1:]
    while rest and rest[0] in _JOINED_INFIXES:
        parts.append(rest.pop(0))
    if rest:
        parts.append(rest.pop(0))
    parts.extend(w for w in rest if w in _KEPT_SUFFIXES)
    return "".join(parts)


def architecture(gpu: str, table: Sequence[tuple[str, str]] = GPU_GENERATIONS) -> str:
    """Return the architecture of a GPU type, or '' when the table does not know it."""
    for pattern, name in table:
        if re.search(pattern, gpu):
            return name
    return ""


def primary_gpu(types: Sequence[str]) -> str:
    """Pick the newest architecture's GPU type, else the most common one."""
    if not types:
        return UNKNOWN_GPU
    counts = Counter(types)
    rank = {name: position for position, name in enumerate(ARCHITECTURES, 1)}

    def preference(gpu: str) -> tuple[int, int, str]:
        newest = rank.get(architecture(gpu), 0)
        return (-newest, -counts[gpu], gpu)

    return min(counts, key=preference)
