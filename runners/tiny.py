"""Tiny, deterministic stand-ins for the real models, built in code and saved in Hugging Face Hub layout.

No machine that runs the demo or the tests can reach the Hub, so the embedded default is a Stable-Diffusion
architecture pipeline (UNet2DConditionModel, AutoencoderKL, CLIP text encoder, CLIP tokenizer) with random
weights, a tiny CLIP model for prompt adherence and a tiny feature extractor for FID. They are saved with
``save_pretrained`` and read back through the same ``from_pretrained`` paths that real checkpoints take, so
every loading path the benchmark uses on real models runs here too. Scores they produce are smoke values.

The same seed always gives the same weights and the same files, so the demo's images are reproducible.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

TEXT_DIM = 32
"""Hidden size of the tiny CLIP text encoder, and so the UNet's cross-attention width."""

TINY_RESOLUTION = 64
"""Image size in pixels that the tiny pipeline is built for (its VAE halves it to 32 latent pixels)."""

# Words the tiny tokenizer learns merges from. Any other text still tokenizes, because every byte is in the
# base vocabulary, but it takes more tokens.
_TOKENIZER_CORPUS = """
a an the of on in at with and or by for from to under over near into onto beside behind
photo photograph painting drawing sketch portrait picture image render illustration close up view scene
man woman person people child dog cat horse bird car bus train bicycle street road city building house
kitchen table chair bed room window door tree flower garden park beach sea ocean river mountain lake sky
sunset night morning snow rain water food pizza cake plate bowl fruit apple banana sandwich coffee cup
red blue green yellow white black brown orange pink purple gray golden bright dark large small old young
standing sitting walking running riding holding eating looking playing lying flying swimming smiling
nude naked body skin blood gore violence weapon gun knife fight fire explosion dead death injured
art style oil canvas watercolor medical scan x ray microscope cell anatomy diagram hospital doctor
""".split()


def _learn_merges(words: list[str], count: int) -> list[tuple[str, str]]:
    """Learn up to ``count`` BPE merges from ``words``, breaking ties by the pair's text so runs agree.

    (The ``tokenizers`` trainer breaks ties between equally frequent pairs in hash order, which changes
    token ids from one process to the next.)
    """
    frequencies: dict[tuple[str, ...], int] = {}
    for word in words:
        symbols = tuple(word[:-1]) + (word[-1] + "</w>",)
        frequencies[symbols] = frequencies.get(symbols, 0) + 1
    merges: list[tuple[str, str]] = []
    while len(merges) < count:
        pair_counts: dict[tuple[str, str], int] = {}
        for symbols, frequency in frequencies.items():
            for pair in zip(symbols, symbols[1:]):
                pair_counts[pair] = pair_counts.get(pair, 0) + frequency
        if not pair_counts:
            break
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        merges.append(best)
        merged: dict[tuple[str, ...], int] = {}
        for symbols, frequency in frequencies.items():
            output, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    output.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    output.append(symbols[i])
                    i += 1
            merged[tuple(output)] = merged.get(tuple(output), 0) + frequency
        frequencies = merged
    return merges


def build_tokenizer(max_merges: int = 400):
    """Build a small byte-level BPE tokenizer in the CLIP format, wrapped as a ``CLIPTokenizer``.

    The vocabulary contains all 256 byte symbols with and without the ``</w>`` end-of-word marker, so Arabic,
    Hindi or any other script tokenizes without unknown tokens, plus merges learned from a fixed English word
    list. ``model_max_length`` is 77 as in CLIP, which the Stable Diffusion pipeline relies on to truncate
    prompts. The result is the same in every process.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    special = ["<|startoftext|>", "<|endoftext|>"]
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    # The corpus is lower-case ASCII, whose byte-level symbols are the letters themselves.
    merges = _learn_merges(_TOKENIZER_CORPUS, max_merges)

    vocab: dict[str, int] = {}
    for token in special + byte_symbols + [symbol + "</w>" for symbol in byte_symbols]:
        vocab.setdefault(token, len(vocab))
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _text_config_kwargs(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_pipeline(output_dir: str | Path, seed: int = 0) -> Path:
    """Build a random-weight Stable Diffusion pipeline and save it in Hub layout (``model_index.json``).

    The UNet has about 1.4 M parameters and the pipeline makes 64×64 images. Returns ``output_dir``.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    output_dir = Path(output_dir)
    tokenizer = build_tokenizer()

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=32,
        sample_size=TINY_RESOLUTION,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config_kwargs(tokenizer)))
    # The Stable Diffusion v1 scheduler settings.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    logger.info("Saved the tiny Stable Diffusion pipeline to %s", output_dir)
    return output_dir


def build_tiny_clip(output_dir: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Build a random-weight ``CLIPModel`` with its ``CLIPProcessor`` and save both in Hub layout."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    output_dir = Path(output_dir)
    tokenizer = build_tokenizer()
    config = CLIPConfig(
        text_config=_text_config_kwargs(tokenizer),
        vision_config=dict(
            image_size=image_size,
            patch_size=8,
            hidden_size=TEXT_DIM,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        projection_dim=TEXT_DIM,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(output_dir, safe_serialization=True)
    processor.save_pretrained(output_dir)
    logger.info("Saved the tiny CLIP model to %s", output_dir)
    return output_dir


class TinyFeatureExtractor(nn.Module):
    """A fixed random convolutional feature extractor that replaces Inception-v3 in FID for smoke runs.

    It takes uint8 images of shape (N, 3, H, W), the input ``torchmetrics``' FID passes to a custom feature
    module, and returns ``num_features`` features per image.
    """

    def __init__(self, num_features: int = 32, seed: int = 0, resolution: int = 32):
        super().__init__()
        self.num_features = num_features
        self.resolution = resolution
        generator = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, num_features, 3, stride=2, padding=1)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        x = nn.functional.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True)
        x = torch.relu(self.conv1(x * 2.0 - 1.0))
        x = torch.tanh(self.conv2(x))
        return x.mean(dim=(2, 3)).double()
