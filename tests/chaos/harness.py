"""The chaos engine, for tests: it lives in :mod:`sendonce.dev.chaos` because tests are
not installed and ``sendonce dev chaos`` must work from an installed package."""

from sendonce.dev.chaos import ChaosReport, plan_workload, run_chaos

__all__ = ["ChaosReport", "plan_workload", "run_chaos"]
