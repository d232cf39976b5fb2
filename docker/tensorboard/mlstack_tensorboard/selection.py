"""What a URL selects: one experiment, a few, or all of them; and its one canonical spelling.

Each distinct spelling would start its own TensorBoard (and nginx checks the ids as written),
so `3,1`, `1,3,3` and `01,3` are redirected to `1,3` before anything starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_IDS = 20
# MLflow's experiment ids are integers (bigint at most); longer digit strings are not ids.
_ID = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True)
class Selection:
    ids: tuple[int, ...] | None  # None: every active experiment

    @property
    def name(self) -> str:
        """The canonical URL segment, and the view directory's name."""
        return "all" if self.ids is None else ",".join(map(str, self.ids))

    @property
    def nested(self) -> bool:
        """Several experiments: runs go under <experiment id>/ so their names say which."""
        return self.ids is None or len(self.ids) > 1

    @property
    def title(self) -> str:
        if self.ids is None:
            return "all experiments"
        if len(self.ids) == 1:
            return f"experiment {self.ids[0]}"
        return "experiments " + ", ".join(map(str, self.ids))


def parse(segment: str) -> tuple[Selection, bool] | None:
    """(selection, is it spelled canonically), or None when the segment selects nothing."""
    if segment == "all":
        return Selection(None), True
    parts = segment.split(",")
    if not 1 <= len(parts) <= MAX_IDS or not all(_ID.fullmatch(p) for p in parts):
        return None
    ids = tuple(sorted({int(p) for p in parts}))
    selection = Selection(ids)
    return selection, selection.name == segment
