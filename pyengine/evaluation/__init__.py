"""Evaluation of purified classifiers: static and adaptive attacks, report, figures."""
from .api import benchmark, evaluate
from .report import markdown_table, summarize
from .runner import EvalConfig

__all__ = ["EvalConfig", "benchmark", "evaluate", "markdown_table", "summarize"]
