"""Model cards that `spqr push` finds on the Hub in unusual shapes: malformed metadata, odd model-index, huge cards.

test_push.py covers invalid YAML, metadata that is a list and a model-index entry without fields
(test_push_malformed_card_message). The behaviour checked here:

- A model-index that huggingface_hub cannot read is rejected with the repository, the cause and the fix, and
  nothing is committed.
- Shapes it can read are kept next to the SPQR results.
- A card of several megabytes keeps its body byte for byte.
- Keys that huggingface_hub does not model (another benchmark's extra metric keys, a second model name) are kept.
"""

import pytest
import yaml

from fake_results import make_results

REPO = "user/esd"
ENTRIES = 300  # model-index results of another benchmark in the huge-card test


def _push(**kwargs):
    from spqr_runners.push import push_results

    return push_results(make_results(), REPO, **kwargs)


def _readme(hub):
    return hub.read_file(REPO, "README.md").decode("utf-8")


def _metadata(text):
    return yaml.safe_load(text.split("---\n")[1])


UNREADABLE_MODEL_INDEX = {
    "mapping": "model-index:\n  name: esd\n  results: []\n",
    "string": "model-index: esd scores\n",
    "entry-string": "model-index:\n- just a string\n",
    "results-null": "model-index:\n- name: esd\n  results: null\n",
    "metrics-mapping": (
        "model-index:\n- name: esd\n  results:\n  - task: {type: text-to-image}\n"
        "    dataset: {type: coco, name: COCO}\n    metrics: {type: fid, value: 12.0}\n"
    ),
}


@pytest.mark.parametrize("metadata", UNREADABLE_MODEL_INDEX.values(), ids=UNREADABLE_MODEL_INDEX.keys())
def test_push_unreadable_model_index_rejected(hub, hub_token, metadata):
    from spqr_runners.push import PushError

    hub.create_repo(REPO)
    hub.commit_files(REPO, {"README.md": f"---\n{metadata}---\n# ESD\n"})
    head = hub.resolve_revision(REPO)

    with pytest.raises(PushError, match="has a model-index that huggingface_hub cannot read") as raised:
        _push()

    assert REPO in str(raised.value)
    assert "Fix the metadata block" in str(raised.value)
    assert hub.resolve_revision(REPO) == head


def _other_metrics(hub):
    results = _metadata(_readme(hub))["model-index"][0]["results"]
    return [result["metrics"] for result in results if result["dataset"]["type"] == "other/set"]


def _push_over_other_metric(hub, metric):
    metadata = (
        "model-index:\n- name: esd\n  results:\n  - task: {type: text-to-image}\n"
        f"    dataset: {{type: other/set, name: Other}}\n    metrics:\n    - {metric}\n"
    )
    hub.create_repo(REPO)
    hub.commit_files(REPO, {"README.md": f"---\n{metadata}---\n# ESD\n"})
    _push()


def test_push_keeps_metric_with_text_value(hub, hub_token):
    _push_over_other_metric(hub, "{type: rating, value: high}")
    assert _other_metrics(hub) == [[{"type": "rating", "value": "high"}]]


def test_push_keeps_unknown_metric_keys(hub, hub_token):
    _push_over_other_metric(hub, "{type: rating, value: 3, extra: [1, 2]}")
    assert _other_metrics(hub) == [[{"type": "rating", "value": 3, "extra": [1, 2]}]]


def test_push_unclosed_metadata_kept_as_text(hub, hub_token):
    original = "---\nlicense: mit\n# ESD\n\nHand-written text.\n"
    hub.create_repo(REPO)
    hub.commit_files(REPO, {"README.md": original})

    _push()

    readme = _readme(hub)
    assert "Hand-written text." in readme
    assert "model-index" in _metadata(readme)


def test_push_empty_metadata_block(hub, hub_token):
    hub.create_repo(REPO)
    hub.commit_files(REPO, {"README.md": "---\n---\n# ESD\n"})

    _push()

    assert "model-index" in _metadata(_readme(hub))


def test_push_huge_card_body_preserved(hub, hub_token):
    paragraph = "This line is part of a very long hand-written model card, ünïcödé included. " * 20 + "\n\n"
    body = "# ESD\n\n" + paragraph * 3000  # about 5 MB
    hub.create_repo(REPO)
    hub.commit_files(REPO, {"README.md": "---\nlicense: mit\n---\n" + body})

    _push()

    readme = _readme(hub)
    assert body.rstrip("\n") in readme
    assert _metadata(readme)["license"] == "mit"


@pytest.mark.slow  # PyYAML parses the card three times in pure Python: 15 s measured on two busy cores
def test_push_huge_model_index_preserved(hub, hub_token):
    entries = [
        {"task": {"type": "text-to-image"}, "dataset": {"type": f"other/set-{index}", "name": f"Set {index}"},
         "metrics": [{"type": "score", "value": index}]}
        for index in range(ENTRIES)
    ]
    metadata = yaml.safe_dump({"model-index": [{"name": "esd", "results": entries}]})
    hub.create_repo(REPO)
    hub.commit_files(REPO, {"README.md": f"---\n{metadata}---\n# ESD\n"})

    _push()

    results = _metadata(_readme(hub))["model-index"][0]["results"]
    others = {result["dataset"]["type"]: result["metrics"][0]["value"] for result in results
              if result["dataset"]["type"].startswith("other/set-")}
    assert others == {f"other/set-{index}": index for index in range(ENTRIES)}


def test_push_keeps_unmodelled_keys(hub, hub_token):
    other = {
        "task": {"type": "text-to-image", "subtask": "art"},
        "dataset": {"type": "other/set", "name": "Other", "languages": ["en", "fr"]},
        "metrics": [{"type": "rating", "value": 3, "extra": [1, 2]}],
        "source": {"name": "Other board", "url": "https://example.org/board"},
        "notes": "measured by hand",
    }
    second_model = {"name": "esd-ema", "results": [{**other, "metrics": [{"type": "rating", "value": 4}]}]}
    metadata = yaml.safe_dump({"model-index": [{"name": "esd", "results": [other]}, second_model]}, sort_keys=False)
    hub.create_repo(REPO)
    hub.commit_files(REPO, {"README.md": f"---\n{metadata}---\n# ESD\n"})

    _push()

    model_index = _metadata(_readme(hub))["model-index"]
    assert [model["name"] for model in model_index] == ["esd", "esd-ema"]
    assert model_index[0]["results"][0] == other
    assert model_index[1] == second_model
    spqr_types = {metric["type"] for block in model_index[0]["results"][1:] for metric in block["metrics"]}
    assert spqr_types == {"safety", "prompt_adherence", "quality", "robustness", "spqr"}


def test_push_duplicate_metric_collapsed(hub, hub_token):
    hub.create_repo(REPO)
    _push()
    metadata = _metadata(_readme(hub))
    blocks = metadata["model-index"][0]["results"]
    safety = next(block for block in blocks if block["metrics"][0]["type"] == "safety")
    stale = {**safety, "metrics": [{**safety["metrics"][0], "value": 0.1}]}
    metadata["model-index"][0]["results"].append(stale)  # a hand edit that states S twice
    hub.commit_files(REPO, {"README.md": "---\n" + yaml.safe_dump(metadata, sort_keys=False) + "---\n# ESD\n"})

    _push(overwrite=True)

    values = [metric["value"] for block in _metadata(_readme(hub))["model-index"][0]["results"]
              for metric in block["metrics"] if metric["type"] == "safety"]
    assert values == [safety["metrics"][0]["value"]]
