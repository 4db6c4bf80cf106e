#!/usr/bin/env python
"""Time the context pass three ways on one generated sequence (CPU or GPU, tiny model at realistic token counts).

  released-style : what the released code does after generation: re-run the vision encoder and re-forward
                   prompt + completion + queries with 1-D positions
  official       : same positions/result as released, reusing the image features (lens `official` mode)
  cached         : reuse the generation KV cache; only the last token + N queries run (lens `cached` mode)

Times cover the LLM (and vision) work up to the N query states; the context head and SAM2 decoder that
follow are identical in all three modes and excluded. Before timing, two parity checks: `official` must equal the
released-style pass, and `cached` a full re-pass at the M-RoPE positions of generation; the script exits with
status 1 when either difference exceeds the tolerance of lens_model.parity (printed with it). Example:
    python benchmarks/context_pass.py --hidden 256 --layers 4 --new-tokens 64
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import numpy as np
import torch
from _smoke import parse_with_smoke
from PIL import Image

from lens_model.inference.generation import completion_mask
from lens_model.model.modeling import ContextInputs, LensModel
from lens_model.model.tiny import build_tiny_processor, tiny_lens_config, tiny_mllm_config
from lens_model.parity import compare, linear_width


def parity(name: str, got: torch.Tensor, want: torch.Tensor, width: int, dtype: torch.dtype) -> bool:
    """Print max |got - want| against the parity rule's tolerance (lens_model.parity); True when within it."""
    result = compare(got, want, width, dtype)
    print(f"{name}: {result} (lens_model.parity: {str(dtype).split('.')[-1]}, width {width})")
    return result.ok


def released_style_states(model: LensModel, ctx: ContextInputs, pixel_values, grid) -> torch.Tensor:
    """Independent re-implementation of the released pass (vision re-run, 1-D positions over everything)."""
    mllm = model.mllm
    embeds = mllm.get_input_embeddings()(ctx.input_ids)
    image_embeds = mllm.model.visual(pixel_values, grid_thw=grid).pooler_output
    mask = (ctx.input_ids == mllm.config.image_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(mask, image_embeds.to(embeds.dtype))
    n = model.context.num_queries
    embeds = torch.cat([embeds, model.context.learnable_query.to(embeds.dtype).expand(embeds.shape[0], -1, -1)], 1)
    attn = torch.cat([ctx.attention_mask, ctx.attention_mask.new_ones(embeds.shape[0], n)], 1)
    pos = (attn.cumsum(-1) - 1).masked_fill(attn == 0, 1)
    out = mllm.model.language_model(inputs_embeds=embeds, attention_mask=attn, position_ids=pos[None].expand(3, -1, -1))
    return out.last_hidden_state[:, -n:]


def timed(fn, repeats: int, warmup: int, device: torch.device, setup=None, clock=time.perf_counter) -> list[float]:
    """Seconds of `fn` by `clock` (time.perf_counter: wall; time.process_time: the process's CPU time)."""
    times = []
    for i in range(warmup + repeats):
        arg = setup() if setup else None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        fn(arg)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(clock() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256, help="LLM hidden size (default 256)")
    parser.add_argument("--layers", type=int, default=4, help="LLM layers (default 4)")
    parser.add_argument("--queries", type=int, default=64, help="context queries (default 64, as the paper)")
    parser.add_argument(
        "--image-size", default="448x448", help="HxW of the input image (default 448x448 = 256 image tokens)"
    )
    parser.add_argument("--new-tokens", type=int, default=64, help="generated tokens, forced (default 64)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: wall time on torch's default threads; cpu: one thread and the process's CPU time, which other "
        "jobs on a shared machine barely move (CPU only)",
    )
    args = parse_with_smoke(
        parser,
        dict(hidden=64, layers=1, queries=8, image_size="112x112", new_tokens=4, repeats=1, warmup=0),
    )

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.clock == "cpu" and device.type != "cpu":
        parser.error("--clock cpu times the CPU; on a GPU use --clock wall")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.clock == "cpu":
        torch.set_num_threads(1)
    h, w = (int(v) for v in args.image_size.lower().split("x"))
    torch.manual_seed(0)
    processor = build_tiny_processor(max_pixels=max(h * w, 56 * 56))
    mllm_config = tiny_mllm_config(processor.tokenizer, hidden=args.hidden)
    mllm_config.text_config.num_hidden_layers = args.layers
    mllm_config.text_config.layer_types = ["full_attention"] * args.layers
    lens_config = tiny_lens_config(num_queries=args.queries)
    model = LensModel(mllm_config, lens_config).to(device, dtype).eval()

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    chat = processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": "Output the bounding box of the red cup in the image."},
                ],
            }
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    batch = processor(text=[chat], images=[image], return_tensors="pt").to(device)
    pixel_values = batch["pixel_values"].to(dtype)
    tok = processor.tokenizer
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]
    with torch.inference_mode():
        image_outputs = model.encode_mllm_images(pixel_values, batch["image_grid_thw"])
        gen = model.mllm.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch["image_grid_thw"],
            mm_encoder_outputs={"image": image_outputs},
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=tok.pad_token_id,
            return_dict_in_generate=True,
        )
        prompt_len = batch["input_ids"].shape[1]
        completion = gen.sequences[:, prompt_len:]
        ctx = ContextInputs(
            input_ids=gen.sequences,
            attention_mask=torch.cat([batch["attention_mask"], completion_mask(completion, eos)], 1),
            mm_token_type_ids=torch.cat([batch["mm_token_type_ids"], torch.zeros_like(completion)], 1),
            image_grid_thw=batch["image_grid_thw"],
        )
        n_image = int((batch["input_ids"] == mllm_config.image_token_id).sum())
        reference = released_style_states(model, ctx, pixel_values, batch["image_grid_thw"])
        official = model.query_states_full(ctx, image_outputs, positions="1d")
        cached = model.query_states_cached(ctx, copy.deepcopy(gen.cache))
        mrope_full = model.query_states_full(ctx, image_outputs, positions="mrope")

        runs = {
            "released-style": timed(
                lambda _: released_style_states(model, ctx, pixel_values, batch["image_grid_thw"]),
                args.repeats,
                args.warmup,
                device,
                clock=clock,
            ),
            "official": timed(
                lambda _: model.query_states_full(ctx, image_outputs, positions="1d"),
                args.repeats,
                args.warmup,
                device,
                clock=clock,
            ),
            # each run gets its own copy of the cache (the pass appends to it); copying is not timed
            "cached": timed(
                lambda cache: model.query_states_cached(ctx, cache),
                args.repeats,
                args.warmup,
                device,
                setup=lambda: copy.deepcopy(gen.cache),
                clock=clock,
            ),
        }

    print(f"device {device}, dtype {args.dtype}, torch threads {torch.get_num_threads()}, {args.clock} clock")
    print(f"LLM hidden {args.hidden}, layers {args.layers}; vision depth {mllm_config.vision_config.depth}")
    print(f"tokens: prompt {prompt_len} (image {n_image}), generated {completion.shape[1]}, queries {args.queries}")
    width = linear_width(model.mllm.model.language_model)
    checks = [
        parity("official == released-style", official, reference, width, dtype),
        parity("cached == full pass at M-RoPE positions", cached, mrope_full, width, dtype),
    ]
    print(f"{'mode':<16}{'median ms':>12}{'min ms':>10}{'speed-up vs released':>24}")
    base = statistics.median(runs["released-style"])
    for name, times in runs.items():
        med = statistics.median(times)
        print(f"{name:<16}{med * 1e3:>12.2f}{min(times) * 1e3:>10.2f}{base / med:>23.2f}x")
    if not all(checks):
        print("parity check failed: the passes above do not compute the same query states", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
