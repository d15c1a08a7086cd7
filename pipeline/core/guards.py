"""Stop on nonsense: a stage whose input makes it keep nothing, or reject too much, fails.

A wrong folder or file in params rarely crashes anything: every row is simply rejected
(``missing_image``, ``empty_caption``, ``no_nouns``) and the next stage runs on nothing.
``check_rejects`` turns that into an error that names the top reasons with their counts, an
example of each, and what to check, so ``dvc repro`` stops at the stage that went wrong.
"""

from __future__ import annotations

from typing import Mapping

RESTORE_HINT = "previous outputs: `dvc checkout {stage}`"


class StageInputError(ValueError):
    """The stage's input is not what its params say it is (wrong file, folder or format)."""


def check_rejects(
    stage: str,
    considered: int,
    kept: int,
    rejected_by_reason: Mapping[str, int],
    max_share: float,
    *,
    unit: str = "rows",
    hints: Mapping[str, str] | None = None,
    examples: Mapping[str, str] | None = None,
    top: int = 3,
) -> None:
    """Raise ``StageInputError`` when ``kept == 0`` or rejects exceed ``max_share`` of ``considered``.

    ``considered``: rows the checks ran on (kept + rejected); ``hints``: reason -> what to check;
    ``examples``: reason -> one rejected row's detail. An input of 0 rows is an error too.
    """
    rejected = sum(rejected_by_reason.values())
    share = rejected / considered if considered else 1.0
    if considered and kept > 0 and share <= max_share:
        return
    if not considered:
        raise StageInputError(f"{stage}: the input has no {unit}; is the input file the right one?")
    reasons = sorted(rejected_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    hints, examples = hints or {}, examples or {}
    if kept == 0 and len(rejected_by_reason) == 1:
        head = f"all {rejected} {unit} rejected as {reasons[0][0]}"
    elif kept == 0:
        head = f"no {unit} kept: {rejected} of {considered} rejected"
    else:
        head = f"{rejected} of {considered} {unit} rejected ({share:.0%}, more than max_reject_share {max_share:g})"
    parts = []
    for reason, n in reasons:
        line = f"  {n} {reason}"
        if reason in examples:
            line += f" (e.g. {examples[reason]})"
        if reason in hints:
            line += f": {hints[reason]}"
        parts.append(line)
    raise StageInputError(f"{stage}: {head}\n" + "\n".join(parts))
