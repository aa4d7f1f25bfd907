"""Readers for reasoning data in the shapes it is published in.

Files are JSONL, JSON (a list of rows), Parquet or CSV (`files`). Each row is turned into this
project's problem row (`problems`) or CoT sample (`cots`); `read_cot_input` is how the stages read
a CoT input. Client-safe: no torch; pyarrow is imported for Parquet files only.
"""

from pai_distil.core.readers.cots import COT_FILES, read_cot_input, read_cots
from pai_distil.core.readers.files import (CANDIDATES, FORMAT_VERIFIER, LETTERS, NOT_DATA, PROBLEM_KEYS, SUFFIXES,
                                           DataError, Row, data_files, detect, read_records)
from pai_distil.core.readers.problems import read_problem_file, read_problems, render_choices

__all__ = ["CANDIDATES", "COT_FILES", "FORMAT_VERIFIER", "LETTERS", "NOT_DATA", "PROBLEM_KEYS", "SUFFIXES", "DataError",
           "Row", "data_files", "detect", "read_cot_input", "read_cots", "read_problem_file", "read_problems",
           "read_records", "render_choices"]
