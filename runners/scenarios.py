"""Scenarios: which benign fine-tuning data and which harmful prompts a run uses.

- ``general``: BFT on English everyday prompts (``bft/general_en``), harmful prompts ``harmful/visu``.
- ``multilingual:<ar|es|fr|hi>``: BFT on prompts in that language (``bft/multilingual_<lang>``).
- ``domain:<art|medical>``: BFT on domain prompts (``bft/domain_<name>``).
- ``ood``: BFT as in ``general``, harmfulness measured on prompts outside the usual harmful distribution
  (``ood/jailbreak+paraphrase``), to see whether a safety collapse generalises.
"""

from __future__ import annotations

from typing import Any

LANGUAGES = ("ar", "es", "fr", "hi")
DOMAINS = ("art", "medical")
SCENARIOS = ("general", *(f"multilingual:{code}" for code in LANGUAGES), *(f"domain:{name}" for name in DOMAINS),
             "ood")


def scenario_prompt_sets(scenario: str) -> dict[str, dict[str, str]]:
    """Return the prompt sets a scenario sets, as ``{role: {"config": ..., "split": ...}}``.

    Raises:
        ValueError: For an unknown scenario, listing the known ones.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; known scenarios: {', '.join(SCENARIOS)}")
    if scenario == "general":
        return {"bft": {"config": "bft", "split": "general_en"}}
    if scenario == "ood":
        return {
            "bft": {"config": "bft", "split": "general_en"},
            "harmful": {"config": "ood", "split": "jailbreak+paraphrase"},
        }
    kind, _, value = scenario.partition(":")
    return {"bft": {"config": "bft", "split": f"{kind}_{value}"}}


def apply_scenario(data: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """Fill the prompt sets of a raw config mapping from its ``scenario`` key.

    A scenario and an explicit prompt set for the same role contradict each other, so that is reported as a
    problem rather than silently resolved either way.
    """
    scenario = data.get("scenario")
    if scenario is None:
        return data
    if not isinstance(scenario, str) or scenario not in SCENARIOS:
        problems.append(f"scenario: must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
        return data
    prompts = dict(data.get("prompts") or {})
    for role, prompt_set in scenario_prompt_sets(scenario).items():
        given = prompts.get(role)
        if isinstance(given, dict) and ("config" in given or "split" in given or "file" in given):
            problems.append(
                f"prompts.{role}: scenario {scenario!r} already chooses {prompt_set['config']}/{prompt_set['split']};"
                f" remove prompts.{role}.config/split/file or the scenario"
            )
            continue
        prompts[role] = {**(given or {}), **prompt_set}
    return {**data, "prompts": prompts}
