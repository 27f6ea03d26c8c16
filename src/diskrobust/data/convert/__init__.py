"""Converters from public spine MR datasets to the project's dataset format (docs/data.md, Real datasets).

Each reader (``spider``, ``mrspineseg``, ``generic``) pairs files into `SeriesTask`s with a label map
to SPIDER numbers; `convert_dataset` cuts and orients the mid-sagittal slice of each series, traces
176-point disk contours, writes images/, labels/, contours/, datalist.json (split by patient) and
report.json / report.md.
"""

from diskrobust.data.convert.common import ConvertOptions, SeriesTask, convert_series
from diskrobust.data.convert.generic import build_label_map, find_generic_series
from diskrobust.data.convert.geometry import find_sagittal_axes, read_volume
from diskrobust.data.levels import disk_level, level_to_disk_label
from diskrobust.data.convert.mrspineseg import MRSPINESEG_LABEL_MAP, find_mrspineseg_series
from diskrobust.data.convert.pipeline import convert_dataset, split_patients
from diskrobust.data.convert.spider import SPIDER_LABEL_MAP, find_spider_series

__all__ = [
    "ConvertOptions",
    "SeriesTask",
    "convert_series",
    "convert_dataset",
    "split_patients",
    "find_spider_series",
    "find_mrspineseg_series",
    "find_generic_series",
    "build_label_map",
    "find_sagittal_axes",
    "read_volume",
    "disk_level",
    "level_to_disk_label",
    "SPIDER_LABEL_MAP",
    "MRSPINESEG_LABEL_MAP",
]
