"""What a study run records per arm: the outcome both engines return and the report reads.

Its own module so that the runner (which produces outcomes) and the report (which reads them)
both import it, and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diskrobust.study.grid import Arm


class ArmFailed(RuntimeError):
    """A bundle run of one arm exited non-zero; the message names the arm, the stage and the log."""


@dataclass
class ArmOutcome:
    arm: Arm
    status: str  # "done", "skipped" (finished earlier), "failed"
    seconds: float = 0.0
    error: str = ""
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds of its successful run
    attempts: dict[str, int] = field(default_factory=dict)  # stage -> tries it took (1 = no retry)

    @property
    def retried(self) -> bool:
        return any(n > 1 for n in self.attempts.values())

    def note(self) -> str:
        """One line for the console and the report."""
        if self.status == "skipped":
            return "finished earlier, skipped"
        tries = ", ".join(f"{s} took {n} tries" for s, n in self.attempts.items() if n > 1)
        if self.status == "failed":
            return "FAILED: " + (self.error.splitlines() or [""])[0] + (f" ({tries})" if tries else "")
        return f"done in {self.seconds:.0f} s" + (f" ({tries})" if tries else "")
