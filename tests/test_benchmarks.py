"""Smoke tests of the performance benchmarks: each runs at a tiny size and returns its ratio fields.

Nothing here asserts on a timing. The checks are on the shape of the records, on the correctness conditions
the benchmarks verify while they time (same detections, same cosines, images within rounding, weights
restored, cache hits), and on the Markdown the results page is rewritten with.
"""

import json

import pytest

from benchmarks.common import benchmark_result, format_measured, format_ratio, format_target, machine_info
from benchmarks.docs import render_results_section, replace_section

RESULT_FIELDS = {"benchmark", "description", "measured", "ratio", "ratio_definition", "target", "target_rule",
                 "direction", "checks", "passed", "repeats", "note"}


def _check_record(result, name):
    assert RESULT_FIELDS <= set(result)
    assert result["benchmark"] == name
    assert result["ratio"] > 0
    assert result["direction"] in ("at_least", "at_most")
    if result["direction"] == "at_least":
        meets_target = result["ratio"] >= result["target"]
    else:
        meets_target = result["ratio"] <= result["target"]
    assert result["passed"] == (meets_target and all(result["checks"].values()))
    json.dumps(result)  # every record must be serialisable for --json and --json-output


# ----------------------------------------------------------------------------------------- records and docs


def test_result_at_least_passes_on_target():
    result = benchmark_result("x", "d", measured={}, ratio=4.0, ratio_definition="a / b", target=4.0,
                              direction="at_least", repeats=1)
    assert result["passed"] is True
    assert result["target_rule"] == ">= 4"


def test_result_at_most_fails_above_target():
    result = benchmark_result("x", "d", measured={}, ratio=0.06, ratio_definition="a / b", target=0.05,
                              direction="at_most", repeats=1)
    assert result["passed"] is False


def test_result_failed_check_fails_result():
    result = benchmark_result("x", "d", measured={}, ratio=9.0, ratio_definition="a / b", target=2.0,
                              direction="at_least", repeats=1, checks={"same_output": False})
    assert result["passed"] is False


def test_result_unknown_direction_rejected():
    with pytest.raises(ValueError, match="direction must be 'at_least' or 'at_most', got 'up'"):
        benchmark_result("x", "d", measured={}, ratio=1.0, ratio_definition="a / b", target=1.0, direction="up",
                         repeats=1)


def test_format_cost_ratio_as_percentage():
    result = benchmark_result("x", "d", measured={}, ratio=0.021, ratio_definition="a / b", target=0.03,
                              direction="at_most", repeats=1)
    assert format_ratio(result) == "2.1%"
    assert format_target(result) == "<= 3%"


def test_format_measured_units():
    text = format_measured({"cold_run_s": 42.25, "warm_s": 0.1234, "file_mib": 0.19, "stages": 9})
    assert text == "cold run 42.2 s; warm 0.123 s; file 0.19 MiB; stages 9"


def test_paired_times_warmup_uses_index_minus_one():
    from benchmarks.common import paired_times

    calls = []
    first, second = paired_times(lambda i: calls.append(("a", i)), lambda i: calls.append(("b", i)), 2, "t",
                                 warmup=True)
    assert calls == [("a", -1), ("b", -1), ("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert len(first) == 2
    assert len(second) == 2


def test_paired_times_zero_repeats_rejected():
    from benchmarks.common import paired_times

    with pytest.raises(ValueError, match="repeats must be a positive integer, got 0"):
        paired_times(lambda i: None, lambda i: None, 0, "t")


def test_benign_prompts_unique_beyond_shipped():
    from benchmarks.common import benign_prompts

    prompts = benign_prompts(300)
    assert len(prompts) == 300
    assert len(set(prompts)) == 300


def test_benign_prompts_zero_rejected():
    from benchmarks.common import benign_prompts

    with pytest.raises(ValueError, match="count must be a positive integer, got 0"):
        benign_prompts(0)


def test_machine_info_has_versions():
    info = machine_info()
    assert info["cores"] >= 1
    assert info["torch"] != "not installed"
    assert info["onnxruntime"] != "not installed"
    assert info["cpu"]


def test_replace_section_keeps_surrounding_text(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- benchmarks:results:start -->\nold\n<!-- benchmarks:results:end -->\noutro\n")
    replace_section(page, "results", "new table")
    expected = "intro\n<!-- benchmarks:results:start -->\nnew table\n<!-- benchmarks:results:end -->\noutro\n"
    assert page.read_text() == expected


def test_replace_section_missing_markers_rejected(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("no markers here\n")
    with pytest.raises(ValueError, match="must contain the lines '<!-- benchmarks:gpu:start -->'"):
        replace_section(page, "gpu", "table")


def test_results_section_lists_every_benchmark():
    results = [
        benchmark_result("fast_thing", "A vs B", measured={"a_s": 1.0}, ratio=5.0, ratio_definition="a / b",
                         target=4.0, direction="at_least", repeats=3, note="why"),
        benchmark_result("cheap_thing", "C vs D", measured={"c_s": 1.0}, ratio=0.5, ratio_definition="c / d",
                         target=0.05, direction="at_most", repeats=3),
    ]
    text = render_results_section(machine_info(), results, "make bench", 60.0)
    assert "| `fast_thing` |" in text
    assert "| `cheap_thing` |" in text
    assert "1 of 2 targets met." in text
    assert "- `fast_thing`: why" in text
    assert "**not met**" in text


def test_run_all_names_match_registry():
    from benchmarks.run_all import BENCHMARK_NAMES, _benchmarks

    assert tuple(_benchmarks()) == BENCHMARK_NAMES


def test_run_all_unknown_name_rejected():
    from benchmarks.run_all import run_benchmarks

    with pytest.raises(ValueError, match="Unknown benchmarks"):
        run_benchmarks(["no_such_benchmark"])


# ----------------------------------------------------------------------------------------- the benchmarks


def test_nudenet_judge_bench_tiny():
    from benchmarks.judges import bench_nudenet_judge

    result = bench_nudenet_judge(num_images=2, image_size=64, batch_size=2, repeats=1)
    _check_record(result, "nudenet_judge")
    assert result["checks"]["same_detections"]
    assert result["measured"]["loop_s"] > 0


def test_clip_adherence_bench_tiny(tiny_clip_path):
    from benchmarks.judges import bench_clip_adherence

    result = bench_clip_adherence(num_images=2, image_size=32, batch_size=2, repeats=1, model_dir=tiny_clip_path)
    _check_record(result, "clip_adherence_tiny")
    assert result["checks"]["same_cosines"]


def test_clip_adherence_unknown_size_rejected():
    from benchmarks.judges import bench_clip_adherence

    with pytest.raises(ValueError, match="model_size must be one of"):
        bench_clip_adherence(model_size="huge")


def test_generation_bench_tiny(tiny_sd_path):
    from benchmarks.generation import bench_generation

    result = bench_generation(num_images=2, batch_size=2, steps=1, resolution=32, repeats=1, model_dir=tiny_sd_path)
    _check_record(result, "generation")
    assert result["checks"]["within_rounding"]
    assert result["measured"]["max_pixel_difference"] <= 1


def test_adapter_toggle_bench_tiny(tiny_sd_path):
    from benchmarks.adapter import bench_adapter_toggle

    result = bench_adapter_toggle("tiny", repeats=1, model_dir=tiny_sd_path)
    _check_record(result, "adapter_toggle_tiny")
    assert result["checks"]["base_weights_restored"]
    assert result["checks"]["same_output_as_peft"]
    assert result["measured"]["peft_load_lora_s"] > 0


def test_fid_reference_cache_bench_tiny():
    from benchmarks.warm_rerun import bench_fid_reference_cache

    result = bench_fid_reference_cache(num_images=4, image_size=16, num_features=8, repeats=1)
    _check_record(result, "fid_reference_cache")
    assert result["checks"]["cache_hit"]
    assert result["checks"]["same_statistics"]


def test_sd15_flops_scale_with_batch():
    from benchmarks.sd15 import count_flops

    single, double = count_flops(batch_size=1), count_flops(batch_size=2)
    for name in ("unet_forward", "vae_decode", "text_encoder"):
        assert single[name] > 0, name
        assert double[name] == 2 * single[name], name


def test_sd15_unet_parameter_count():
    from benchmarks.sd15 import build_modules

    unet, vae, text_encoder = build_modules("meta")
    # Published sizes of stable-diffusion-v1-5: UNet 859.52 M, VAE 83.65 M, CLIP ViT-L/14 text encoder 123.06 M.
    assert sum(parameter.numel() for parameter in unet.parameters()) == 859_520_964
    assert sum(parameter.numel() for parameter in vae.parameters()) == 83_653_863
    assert sum(parameter.numel() for parameter in text_encoder.parameters()) == 123_060_480


def test_gpu_throughput_without_cuda_exits_with_message(capsys):
    import torch

    from benchmarks.gpu_throughput import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so the benchmark would run")
    with pytest.raises(SystemExit) as raised:
        main(["--steps", "1"])
    assert raised.value.code == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_gpu_throughput_rows_on_cpu_pipeline(tiny_pipeline):
    from benchmarks.gpu_throughput import add_rates, flops_per_image, measure_batch, render_section

    row = measure_batch(tiny_pipeline, batch_size=2, steps=1, repeats=1, resolution=32)
    flops = flops_per_image(steps=1, counts={"unet_forward": 10**9, "vae_decode": 10**9, "text_encoder": 10**6})
    add_rates([row], flops, peak_tflops=100.0)
    assert flops["unet"] == 2 * 10**9
    assert row["unet_tflops"] == pytest.approx(row["images_per_s"] * 2e-3)
    assert row["peak_memory_gib"] is None
    report = {"machine": machine_info(), "gpu": "cpu", "cuda": None, "dtype": "float32", "steps": 1, "repeats": 1,
              "flop_counts": {"unet_forward": 10**9, "vae_decode": 10**9, "text_encoder": 10**6},
              "flops_per_image": flops, "rows": [row]}
    assert "| 2 |" in render_section(report, "python -m benchmarks.gpu_throughput")


@pytest.mark.slow
def test_memory_bench_tiny(tiny_sd_path):
    from benchmarks.memory import bench_memory

    result = bench_memory(small=2, large=4, resolution=16, steps=1, batch_size=2, model_dir=tiny_sd_path)
    _check_record(result, "memory")
    assert result["checks"]["all_judged"]
    assert result["measured"]["peak_at_4_prompts_mib"] > 0


@pytest.mark.slow
def test_warm_rerun_bench_tiny():
    from benchmarks.warm_rerun import SMALL_RUN, bench_warm_rerun

    settings = json.loads(json.dumps(SMALL_RUN))
    for role in ("harmful", "benign", "bft"):
        settings["prompts"][role]["limit"] = 2
    settings["generation"] = {"steps": 1, "resolution": 32, "batch_size": 2}
    settings["finetune"] = {"batch_size": 2, "epochs": 1, "max_steps": 1}
    settings["quality"]["reference_count"] = 4
    settings["scoring"] = {"bootstrap": 10}
    result = bench_warm_rerun(repeats=1, settings=settings)
    _check_record(result, "warm_rerun")
    assert result["checks"]["same_scores"]
    assert result["checks"]["all_stages_reused"]
