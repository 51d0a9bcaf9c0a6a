"""Tests of the LlavaGuard judge: response parsing, and loading and generation with a tiny random LLaVA-OneVision."""

import json
import logging

import pytest
from PIL import Image

from spqr_metric.judges import JudgeLoadError, Status, get_judge
from spqr_metric.judges.llavaguard import LlavaGuardJudge, verdict_from_response
from spqr_metric.judges.llavaguard_policy import DEFAULT_POLICY, POLICY_CATEGORIES, parse_assessment

TINY_IMAGE_SIZE = 32
TINY_GRID = [[32, 32], [32, 64], [64, 32], [64, 64]]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _build_tokenizer():
    """Train a tiny byte-level BPE with the special tokens of LLaVA-OneVision's Qwen2 tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([DEFAULT_POLICY, '{"rating": "Unsafe", "category": "O3", "rationale": ""}'], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_llavaguard(output_dir, seed=0):
    """Save a random-weight LlavaOnevisionForConditionalGeneration and its processor in Hub layout."""
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
    )

    from spqr_metric.judges.llavaguard import _image_only_processor_class

    tokenizer = _build_tokenizer()
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}, image_grid_pinpoints=TINY_GRID
    )
    patches_per_side = TINY_IMAGE_SIZE // 8
    processor = _image_only_processor_class()(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=patches_per_side**2,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )
    config = LlavaOnevisionConfig(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=TINY_IMAGE_SIZE,
            patch_size=8,
            vision_use_head=False,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=4096,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=TINY_GRID,
        vision_feature_select_strategy="full",
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_llavaguard(tmp_path_factory.mktemp("tiny-llavaguard"))


@pytest.fixture(scope="module")
def tiny_judge(tiny_model_dir):
    return LlavaGuardJudge(model_id=str(tiny_model_dir), max_new_tokens=8, batch_size=2, progress=False)


def _images():
    return [
        Image.new("RGB", (40, 20), (255, 0, 0)),
        Image.new("RGBA", (64, 64), (0, 255, 0, 128)),
        Image.new("L", (16, 48), 200),
    ]


# Parsing of responses.

PARSE_CASES = {
    "plain": ('{"rating": "Unsafe", "category": "O3: Sexual Content", "rationale": "r"}', True, "O3"),
    "safe_na": ('{"rating": "Safe", "category": "NA: None applying", "rationale": "r"}', False, "NA"),
    "fenced": ('```json\n{"rating": "Unsafe", "category": "O4", "rationale": "r"}\n```', True, "O4"),
    "trailing_text": ('{"rating": "Safe", "category": "NA", "rationale": "r"} I hope this helps.', False, "NA"),
    "leading_text": ('Assessment: {"rating": "Unsafe", "category": "O2", "rationale": "r"}', True, "O2"),
    "single_quotes": ("{'rating': 'Unsafe', 'category': 'O1: Hate, Humiliation, Harassment'}", True, "O1"),
    "upper_case": ('{"rating": "UNSAFE", "category": "o9", "rationale": "r"}', True, "O9"),
    "lower_case": ('{"rating": "safe", "category": "NA"}', False, "NA"),
    "trailing_comma": ('{\n "rating": "Unsafe",\n "category": "O6",\n "rationale": "r",\n}', True, "O6"),
    "key_case": ('{"Rating": "Unsafe", "Category": "O7: Self-Harm"}', True, "O7"),
    "truncated": ('{"rating": "Unsafe", "category": "O3: Sexual Content", "rationale": "The image sh', True, "O3"),
    "braces_in_string": ('{"rating": "Safe", "category": "NA", "rationale": "a {curly} note"}', False, "NA"),
    "unknown_category": ('{"rating": "Unsafe", "category": "violence"}', True, None),
    "missing_category": ('{"rating": "Unsafe"}', True, None),
}


@pytest.mark.parametrize("case", sorted(PARSE_CASES))
def test_parse_rating(case):
    response, unsafe, _ = PARSE_CASES[case]
    assessment = parse_assessment(response)
    assert assessment is not None
    assert assessment.unsafe is unsafe


@pytest.mark.parametrize("case", sorted(PARSE_CASES))
def test_parse_category(case):
    response, _, category = PARSE_CASES[case]
    assert parse_assessment(response).category == category


def test_parse_keeps_category_text():
    assessment = parse_assessment('{"rating": "Unsafe", "category": "O3: Sexual Content", "rationale": "why"}')
    assert assessment.category_text == "O3: Sexual Content"
    assert assessment.rationale == "why"


@pytest.mark.parametrize(
    "response",
    [
        "",
        "I cannot help with that.",
        '{"rating": "maybe", "category": "O3"}',
        '{"category": "O3", "rationale": "no rating"}',
        "{not json at all",
        '{"rating": ["Unsafe"]}',
        "rating",
    ],
)
def test_parse_unreadable_none(response):
    assert parse_assessment(response) is None


def test_verdict_unsafe_flagged():
    verdict = verdict_from_response('{"rating": "Unsafe", "category": "O4: Nudity Content", "rationale": "r"}')
    assert verdict.status is Status.FLAGGED
    assert verdict.category == "O4"
    assert verdict.detail["category_text"] == "O4: Nudity Content"
    assert verdict.judge == "llavaguard"


def test_verdict_safe_clean():
    verdict = verdict_from_response('{"rating": "Safe", "category": "NA: None applying", "rationale": "r"}')
    assert verdict.status is Status.CLEAN
    assert verdict.unsafe is False


def test_verdict_unparseable_undetermined():
    verdict = verdict_from_response("<garbled>")
    assert verdict.status is Status.UNDETERMINED
    assert verdict.unsafe is None
    assert verdict.detail["response"] == "<garbled>"


def test_verdict_json_serialisable():
    verdict = verdict_from_response('{"rating": "Unsafe", "category": "O3", "rationale": "r"}')
    assert json.loads(json.dumps(verdict.to_dict()))["category"] == "O3"


def test_policy_lists_all_categories():
    for code, name in POLICY_CATEGORIES.items():
        assert f"{code}: {name}" in DEFAULT_POLICY


def test_policy_category_names():
    assert POLICY_CATEGORIES["O3"] == "Sexual Content"
    assert POLICY_CATEGORIES["O4"] == "Nudity Content"
    assert len(POLICY_CATEGORIES) == 9


def test_judge_maps_fake_responses(monkeypatch):
    judge = LlavaGuardJudge(progress=False)
    responses = ['{"rating": "Unsafe", "category": "O3"}', '{"rating": "Safe", "category": "NA"}', "???"]
    monkeypatch.setattr(judge, "generate_responses", lambda images: responses)
    statuses = [verdict.status for verdict in judge.judge(["a", "b", "c"])]
    assert statuses == [Status.FLAGGED, Status.CLEAN, Status.UNDETERMINED]


def test_judge_logs_undetermined(monkeypatch, caplog):
    judge = LlavaGuardJudge(progress=False)
    monkeypatch.setattr(judge, "generate_responses", lambda images: ["???", "???"])
    with caplog.at_level(logging.WARNING):
        judge.judge(["a", "b"])
    assert "2 of 2" in caplog.text


# Loading and generation with the tiny model.


def test_tiny_model_judges_images(tiny_judge):
    verdicts = tiny_judge.judge(_images())
    assert len(verdicts) == 3
    for verdict in verdicts:
        assert verdict.judge == "llavaguard"
        assert isinstance(verdict.detail["response"], str)


def test_tiny_model_random_output_undetermined(tiny_judge):
    # Random weights produce no JSON, so every verdict is undetermined rather than a guess.
    verdicts = tiny_judge.judge(_images()[:1])
    assert verdicts[0].status is Status.UNDETERMINED


def test_tiny_model_batch_equals_single(tiny_model_dir):
    batched = LlavaGuardJudge(model_id=str(tiny_model_dir), max_new_tokens=6, batch_size=3, progress=False)
    single = LlavaGuardJudge(model_id=str(tiny_model_dir), max_new_tokens=6, batch_size=1, progress=False)
    images = _images()
    assert batched.generate_responses(images) == single.generate_responses(images)


def test_tiny_model_loads_lazily(tiny_model_dir):
    judge = LlavaGuardJudge(model_id=str(tiny_model_dir))
    assert judge._model is None


def test_tiny_model_settings(tiny_judge):
    tiny_judge.load()
    settings = tiny_judge.settings()
    assert settings["decoding"] == "greedy"
    assert settings["policy_version"] == "spqr-llavaguard-policy-1"
    assert len(settings["policy_sha256"]) == 64


def test_missing_model_load_error(tmp_path):
    judge = LlavaGuardJudge(model_id=str(tmp_path / "no-such-model"))
    with pytest.raises(JudgeLoadError, match="'llavaguard'.*no-such-model"):
        judge.load()


def test_offline_hub_model_load_error():
    # The test session runs with HF_HUB_OFFLINE=1 and an empty cache, as on a machine without network access.
    judge = get_judge("llavaguard")
    with pytest.raises(JudgeLoadError, match="(?s)AIML-TUDA/LlavaGuard-v1.2-0.5B-OV-hf.*hf download"):
        judge.load()


def test_custom_policy_recorded():
    settings = LlavaGuardJudge(policy="Rate the image.").settings()
    assert settings["policy_version"] == "custom"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"batch_size": 0}, "batch_size"),
        ({"dtype": "float64"}, "dtype"),
        ({"policy": "  "}, "policy"),
    ],
)
def test_invalid_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LlavaGuardJudge(**kwargs)
