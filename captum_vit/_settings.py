"""Settings of resumable runs: what differs between a run's saved settings and now.

A resumable job (the records of ``explain`` and ``evaluate``, the step checkpoints
of the ViT Shapley trainers) stores the settings it was made with and refuses to
continue with others. :func:`settings_diff` writes the part of that refusal naming
the differing settings, the same way everywhere. This module imports nothing from
``captum_vit``.
"""

from __future__ import annotations

from typing import Any, Callable, List, Mapping

#: Settings named in one message, at most (``"; ..."`` stands for the others).
MAX_NAMED = 5
#: Longest value shown; longer ones are cut to ``MAX_SHOWN - 3`` characters + "...".
MAX_SHOWN = 40


def differing(then: Mapping[str, Any], now: Mapping[str, Any]) -> List[str]:
    """The names of the settings whose values differ (missing counts as None).

    Args:
        then: The settings saved with the run.
        now: The settings asked for now.

    Returns:
        The names present in either mapping whose values differ, sorted.
    """
    return [k for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]


def settings_diff(
    then: Mapping[str, Any],
    now: Mapping[str, Any],
    show: Callable[[Any], str] = str,
) -> str:
    """``"name: <then> then, <now> now; ..."`` for the settings that differ.

    At most :data:`MAX_NAMED` settings are named, sorted by name, with ``"; ..."``
    after them when more differ; each value is written by ``show`` and cut to
    :data:`MAX_SHOWN` characters.

    Args:
        then: The settings saved with the run.
        now: The settings asked for now.
        show: Writes one value (e.g. :func:`str`, or JSON for job records).

    Returns:
        The differences, ready to go between the parentheses of a message.
    """

    def short(value: Any) -> str:
        text = show(value)
        return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."

    diff = [
        f"{k}: {short(then.get(k))} then, {short(now.get(k))} now"
        for k in differing(then, now)
    ]
    return "; ".join(diff[:MAX_NAMED]) + ("; ..." if len(diff) > MAX_NAMED else "")
