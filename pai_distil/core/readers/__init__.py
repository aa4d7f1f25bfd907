"""Readers for reasoning data in the shapes it is published in.

Files are JSONL, JSON (a list of rows), Parquet or CSV (`files`). Each row is turned into this
project's problem row (`problems`), CoT sample (`cots`) or SFT row (`chats`: chat rows with every
turn); `read_cot_input` is how the stages read a CoT input, `read_sft_input` how training stages
do. Client-safe: no torch; pyarrow is imported for Parquet files only.
"""

from pai_distil.core.readers.chats import chat_format, row_verdict
from pai_distil.core.readers.cots import COT_FILES, read_cot_input, read_cots, read_sft_input
from pai_distil.core.readers.files import (CANDIDATES, FORMAT_VERIFIER, LETTERS, NOT_DATA, PROBLEM_KEYS, SUFFIXES,
                                           DataError, Row, data_files, detect, read_records)
from pai_distil.core.readers.problems import read_problem_file, read_problems, render_choices

__all__ = ["CANDIDATES", "COT_FILES", "FORMAT_VERIFIER", "LETTERS", "NOT_DATA", "PROBLEM_KEYS", "SUFFIXES",
           "DataError", "Row", "chat_format", "data_files", "detect", "read_cot_input", "read_cots", "read_problem_file",
           "read_problems", "read_records", "read_sft_input", "render_choices", "row_verdict"]
