"""A mid-sagittal lumbar spine MR phantom of a patient population, with exact 176-point disk contours.

Each subject is one 2D slice (default 512 x 512 px at 0.6 mm) in the orientation of docs/architecture.md
(superior at the top, anterior on the left, spinal canal on the right): T12 .. L5 and the sacrum, the disks
T12/L1 .. L5/S1 (annulus and nucleus), the canal with CSF, conus and cauda equina, laminae and spinous
processes, paraspinal muscle, fat, skin and the abdominal contents in front of the column.

How a subject is made (``generate_subject``), one module per step:

1. ``anatomy``: per-level disk dimensions from the published means and SDs, correlated (subject, disk,
   lordosis, degeneration), a share of lower-height populations, Pfirrmann I-V, pathologies with their
   prevalence (bulge, protrusion, extrusion, migrated fragment, Schmorl nodes, irregular endplates,
   osteophytes, spondylolisthesis, vacuum disk, Modic changes, fatty marrow), lordosis, sacral slope.
2. ``shapes`` + ``column``: disks as four sides between defined corners (pathologies change the sides
   between the corners), vertebral bodies sharing their endplates, the sacrum, canal and posterior arches;
   the column is turned, shifted and mapped to pixels.
3. ``generate``: ground truth from the same dense outlines (each side resampled to 44 points by arc length;
   label map filled from the outline, so contour and mask agree), optional annotation noise.
4. ``render``: spin-echo tissue signals, soft borders and partial volume, marrow texture; bias field, blur,
   Gibbs ringing, Rician noise.
5. ``writer``: the dataset on disk; ``stats``: ``python -m diskrobust phantom-stats``.

Everything random comes from ``numpy.random.default_rng(seed)``: the same seed gives the same subject.
"""

from .anatomy import sample_anatomy
from .config import (
    CANAL_LABEL,
    DISK_LABELS,
    DISK_LEVELS,
    NUCLEUS_T2_BY_GRADE,
    PREVALENCE_DEFAULTS,
    PUBLISHED_DISK_GEOMETRY,
    PUBLISHED_LORDOSIS_DEG,
    TISSUES,
    VERTEBRA_LABELS,
    PhantomConfig,
    PhantomSubject,
    spin_echo_signal,
)
from .generate import annotation_noise, generate_subject, subject_contours
from .writer import ensure_phantom, render_subject_png, subject_seeds, write_phantom_dataset

__all__ = [
    "DISK_LEVELS",
    "DISK_LABELS",
    "VERTEBRA_LABELS",
    "CANAL_LABEL",
    "TISSUES",
    "NUCLEUS_T2_BY_GRADE",
    "PREVALENCE_DEFAULTS",
    "PUBLISHED_DISK_GEOMETRY",
    "PUBLISHED_LORDOSIS_DEG",
    "PhantomConfig",
    "PhantomSubject",
    "annotation_noise",
    "generate_subject",
    "sample_anatomy",
    "subject_contours",
    "subject_seeds",
    "write_phantom_dataset",
    "ensure_phantom",
    "render_subject_png",
    "spin_echo_signal",
]
