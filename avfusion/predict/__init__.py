"""``avfusion predict``'s library: :class:`Predictor` (one model, any video or frames in memory)
and :mod:`.batch` (many inputs, outputs that never collide, bad files reported, several processes)."""
from .batch import BatchResult, Job, combine_tables, expand_inputs, run_batch
from .predictor import COLUMNS, FORMATS, Predictor, check_options, read_table, write_table

__all__ = ["Predictor", "check_options", "read_table", "write_table", "COLUMNS", "FORMATS",
           "BatchResult", "Job", "combine_tables", "expand_inputs", "run_batch"]
