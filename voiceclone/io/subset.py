"""`--limit N` and `--ids a,b,c` / `--ids @FILE`: the rows of a manifest (or report) a run or a check covers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from voiceclone.errors import UsageError


@dataclass(frozen=True)
class Subset:
    """What `--limit` and `--ids` ask for (None: not given)."""

    limit: int | None = None
    ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be at least 1, got {self.limit}")
        if self.ids is not None and not self.ids:
            raise UsageError("--ids names no id")

    @property
    def given(self) -> bool:
        return self.limit is not None or self.ids is not None

    def select(self, rows: list) -> list:
        """The chosen rows (anything with an `id`) in their order: those named by `ids`, every one of which must be
        there, then the first `limit`."""
        chosen = list(rows)
        if self.ids is not None:
            known = {row.id for row in rows}
            unknown = [row_id for row_id in dict.fromkeys(self.ids) if row_id not in known]
            if unknown:
                shown = ", ".join(repr(i) for i in unknown[:5])
                if len(unknown) > 5:
                    shown += f" and {len(unknown) - 5} more"
                raise UsageError(f"--ids: {len(unknown)} id(s) not among the {len(rows)} rows: {shown}")
            wanted = set(self.ids)
            chosen = [row for row in chosen if row.id in wanted]
        return chosen[: self.limit] if self.limit is not None else chosen

    def describe(self, total: int, chosen: int) -> dict | None:
        """The summary's `subset` entry (None when every row is covered)."""
        if not self.given:
            return None
        return {"limit": self.limit, "ids": len(set(self.ids)) if self.ids else None, "of": total, "rows": chosen}


def parse_ids(value: str | None) -> tuple[str, ...] | None:
    """`a,b,c`, or `@FILE` naming a UTF-8 file with one id per line (blank lines skipped)."""
    if value is None:
        return None
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise UsageError(f"--ids {value}: cannot read the id file ({reason})") from None
        ids = [line.strip() for line in lines if line.strip()]
    else:
        ids = [part.strip() for part in value.split(",") if part.strip()]
    if not ids:
        raise UsageError(f"--ids {value}: names no id")
    return tuple(ids)
