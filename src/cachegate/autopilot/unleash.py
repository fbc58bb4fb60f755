"""The stage as Unleash holds it, and moves through its admin API (`cachegate.flags.admin`)."""

from __future__ import annotations

from dataclasses import dataclass

from cachegate.flags import ServerStage, apply_stage, read_stage, set_kill_switch

__all__ = ["UnleashStages"]


@dataclass(frozen=True, slots=True)
class UnleashStages:
    """A `StageStore` over one project and environment of an Unleash server."""

    url: str
    admin_token: str
    project: str = "default"
    environment: str = "development"

    def read(self) -> ServerStage:
        """The stage the flags match now, the kill switch, and when they last changed."""
        return read_stage(
            self.url, self.admin_token, project=self.project, environment=self.environment
        )

    def apply(self, stage: str) -> None:
        """Move to `stage` (atomically for clients: see `cachegate.flags.apply_stage`)."""
        apply_stage(
            self.url,
            self.admin_token,
            stage,
            project=self.project,
            environment=self.environment,
        )

    def kill(self) -> None:
        """Turn the kill switch on: every layer off for everyone, in one change."""
        set_kill_switch(
            self.url,
            self.admin_token,
            on=True,
            project=self.project,
            environment=self.environment,
        )
