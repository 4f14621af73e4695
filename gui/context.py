"""What every tab shares: the allowed folders, the job queue and TensorBoard."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gui.jobs import JobManager
from gui.safety import PathGuard
from gui.tensorboard import TensorBoard


def gui_home() -> Path:
    """Where the GUI keeps job folders (beside the user presets)."""
    home = os.environ.get("LORASMITH_HOME")
    return Path(home) if home else Path.home() / ".lorasmith"


@dataclass
class GuiContext:
    guard: PathGuard
    jobs: JobManager
    tensorboard: TensorBoard

    @classmethod
    def create(cls, allowed_dirs: list[str], jobs_dir: str | os.PathLike[str] | None = None) -> GuiContext:
        return cls(PathGuard.from_dirs(allowed_dirs), JobManager(jobs_dir or gui_home() / "gui-jobs"), TensorBoard())

    def close(self) -> None:
        """Stop training jobs and TensorBoard: nothing keeps running after the GUI exits."""
        self.jobs.shutdown()
        self.tensorboard.stop()
