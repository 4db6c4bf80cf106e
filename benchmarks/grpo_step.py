#!/usr/bin/env python
"""Where does the time of one GRPO step go? And what does batching the rollouts buy?

Runs the stage-2 step of `training.grpo` piece by piece, without DeepSpeed, on a tiny LENS built on the spot
(random weights, realistic token counts) and synthetic scenes, and prints the median seconds of each phase:

  prepare prompts  : load K images + masks, chat template, processor (training.rollout.prepare_prompts)
  rollout/generate : vision encoder once per image + one sampled `generate` of K·G rows (KV cache)
  rollout/context+SAM: context pass of every row (the model's mode) + SAM2 image encoder once per image +
                     mask decoder per row + masks upsampled to the image size (and the texts decoded)
  rewards          : format + box IoU² + mask IoU² (training.rewards.score), group advantages, logged IoUs
  reference        : completion log-probs under the frozen reference MLLM (the KL term; skipped with --beta 0)
  train            : PolicyModel forward (log-probs + masks, autograd) + GRPO loss + mask loss, backward,
                     gradient clipping and an AdamW step (trainable: MLLM, context module, SAM2 prompt
                     encoder and mask decoder; SAM2 image encoder frozen, as training.grpo)

Then it times the batched rollout against two per-completion loops over the same K·G completions, on the same
prompts, in back-to-back rounds:

  per-row loop, shared encoders: the K images encoded once (MLLM vision encoder and SAM2 image encoder, as the
                     batched rollout does), then generate -> context pass -> mask decoder per completion
                     (`per_row_rollouts` below): the ratio to it is what batching alone buys
  naive per-sample loop: training.rollout.sequential_rollouts, one prompt and one completion per call, which
                     re-runs both image encoders for every completion (K·G times instead of K): the ratio to it
                     is batching plus encoder reuse

Example:
    python benchmarks/grpo_step.py        # K=4 x G=8, 32 new tokens, hidden 256, 4 layers (~1 min, 2 cores)
    python benchmarks/grpo_step.py --prompts 8 --max-new-tokens 64 --context-pass official
    python benchmarks/grpo_step.py --device cuda --dtype bfloat16 --hidden 2048 --layers 36 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _smoke import parse_with_smoke

from lens_model.vocab import CONTEXT_PASS_MODES

PHASES = ("prepare prompts", "rollout/generate", "rollout/context+SAM", "rewards", "reference", "train")


def build_model(out: Path, args) -> None:
    """A tiny LENS at the requested sizes, saved as a checkpoint directory (loaded back like a real one)."""
    import torch

    from lens_model.model.checkpoint import save_model
    from lens_model.model.modeling import LensModel
    from lens_model.model.tiny import build_tiny_processor, tiny_lens_config, tiny_mllm_config

    torch.manual_seed(0)
    pixels = args.image_size * args.image_size
    processor = build_tiny_processor(max_pixels=pixels)
    mllm_config = tiny_mllm_config(processor.tokenizer, hidden=args.hidden)
    mllm_config.text_config.num_hidden_layers = args.layers
    mllm_config.text_config.layer_types = ["full_attention"] * args.layers
    lens_config = tiny_lens_config(num_queries=args.queries, sam_image_size=args.sam_size)
    lens_config.max_pixels = pixels
    lens_config.context_pass = args.context_pass
    save_model(LensModel(mllm_config, lens_config), out, processor=processor)


def distinct_images(records, k: int):
    """The first expression of k different images (a batch of K prompts with K images, as in training)."""
    seen, out = set(), []
    for r in records:
        if r.image_path not in seen:
            seen.add(r.image_path)
            out.append(r)
        if len(out) == k:
            return out
    raise SystemExit(f"only {len(out)} distinct images in the synthetic scenes; lower --prompts")


def per_row_rollouts(lens, processor, prompts, group_size: int, sampling: dict) -> list[tuple[int, bool, np.ndarray]]:
    """The batched rollout's work one completion at a time, with the images encoded once: the K images through the
    MLLM vision encoder and the SAM2 image encoder (as `generate_and_segment` does), then for each of the K·G
    completions its own generate -> context pass -> mask decoder -> mask at the image size -> text.
    -> per completion (tokens up to its end, ended with an end token, mask). With do_sample=False in `sampling`
    the completions and masks equal `generate_rollouts`' greedy ones (checked when this loop was written)."""
    import torch

    from lens_model.inference.answer import parse_answer
    from lens_model.inference.backends import TorchBackend
    from lens_model.inference.generation import completion_masks
    from lens_model.inference.prompting import decode_completions, end_token_ids
    from lens_model.model.modeling import ContextInputs
    from lens_model.model.sam import upsample_logits

    device = lens.device
    eos, pad = sampling["eos_token_ids"], sampling["pad_token_id"]
    end_ids = end_token_ids(processor.tokenizer, eos)
    generation = {k: sampling[k] for k in ("max_new_tokens", "temperature", "top_p", "top_k")}
    grid = prompts.image_grid_thw.to(device)
    segmenter = TorchBackend(lens)
    images = lens.encode_mllm_images(prompts.pixel_values.to(device, lens.dtype), grid)  # K images, once
    per_image = tuple(images.pooler_output)
    sam_features = segmenter.encode_images(prompts.sam_images.to(device))  # K images, once
    out = []
    for k in range(len(prompts)):
        image_k = copy.copy(images)  # this image's features alone, as one prompt row sees them
        image_k.pooler_output = (per_image[k],)
        features_k = sam_features.select(torch.tensor([k], device=device))
        ids = prompts.input_ids[k : k + 1].to(device)
        attention = prompts.attention_mask[k : k + 1].to(device)
        types = prompts.mm_token_type_ids[k : k + 1].to(device)
        for _ in range(group_size):
            gen = lens.mllm.generate(
                input_ids=ids,
                attention_mask=attention,
                mm_token_type_ids=types,
                image_grid_thw=grid[k : k + 1],
                mm_encoder_outputs={"image": image_k},
                do_sample=sampling.get("do_sample", True),
                **generation,
                eos_token_id=eos,
                pad_token_id=pad,
                return_dict_in_generate=True,
                use_cache=True,
            )
            completion = gen.sequences[:, ids.shape[1] :]
            read = completion_masks(completion, end_ids)  # the rule generate_and_segment applies (first_end)
            ctx = ContextInputs(
                gen.sequences,
                torch.cat([attention, read.attended], 1),
                torch.cat([types, torch.zeros_like(completion)], 1),
                grid[k : k + 1],
            )
            states = lens.query_states(ctx, image_k, gen.cache)  # (1, N, hidden)
            low_res, _ = segmenter.masks_from_query_states(states, features_k)
            mask = (upsample_logits(low_res, prompts.gt_masks[k].shape)[0] > 0).cpu().numpy()
            text = decode_completions(processor.tokenizer, completion, pad, eos)[0]
            parse_answer(text, lens.lens_config.prompt.answer_format)
            out.append((int(read.valid.sum()), bool(read.ended[0]), mask))
    return out


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="grpo_step-"))
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4, help="K prompts (images) per micro-batch (default 4)")
    parser.add_argument("--generations", type=int, default=8, help="G completions per prompt (default 8, as the paper)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="completion length cap (default 32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps (default 5); medians are printed")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument(
        "--loop-repeats",
        type=int,
        default=2,
        help="timed rounds of the batched rollout vs the two per-completion loops (default 2; 0 skips them)",
    )
    parser.add_argument(
        "--context-pass", default="cached", choices=CONTEXT_PASS_MODES, help="the model's context pass (default cached)"
    )
    parser.add_argument("--hidden", type=int, default=256, help="LLM hidden size (default 256)")
    parser.add_argument("--layers", type=int, default=4, help="LLM layers (default 4)")
    parser.add_argument("--queries", type=int, default=64, help="context queries (default 64, as the paper)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=448,
        help="side of the synthetic scenes and of the MLLM image (default 448 = 256 image tokens)",
    )
    parser.add_argument("--sam-size", type=int, default=256, help="SAM2 input size (default 256; released 1024)")
    parser.add_argument("--beta", type=float, default=0.04, help="KL weight; 0 skips the reference pass (default 0.04)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parse_with_smoke(
        parser,
        dict(
            prompts=2,
            generations=2,
            max_new_tokens=4,
            repeats=1,
            warmup=0,
            loop_repeats=1,
            hidden=64,
            layers=1,
            queries=8,
            image_size=112,
            sam_size=128,
        ),
    )
    if args.generations < 2:
        parser.error("--generations must be >= 2 (GRPO compares completions within a group)")
    if min(args.prompts, args.max_new_tokens, args.repeats) < 1:
        parser.error("--prompts, --max-new-tokens and --repeats must be >= 1")
    return args


def run(args: argparse.Namespace, work: Path) -> int:

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    from lens_model.data import load_dataset
    from lens_model.data.synthetic import make_synthetic
    from lens_model.inference.prompting import special_token_ids
    from lens_model.model.checkpoint import load_model
    from training.grpo import reference_logp, rollout_ious, rollout_samples
    from training.grpo_loss import group_advantages, grpo_loss
    from training.losses import mask_loss
    from training.policy import PolicyModel
    from training.rewards import DEFAULT_REWARD_WEIGHTS, score
    from training.rollout import generate_rollouts, prepare_prompts, sequential_rollouts
    from training.runner import freeze_all_but
    from training.vocab import TRAINABLE_PARTS

    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars between the figures
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but no CUDA GPU is available")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    G = args.generations

    build_model(work / "model", args)
    make_synthetic(work / "scenes", n_images=max(2 * args.prompts, 10), seed=args.seed, image_size=args.image_size)
    records = distinct_images(load_dataset("synthetic", work / "scenes", "train"), args.prompts)

    lens, processor = load_model(work / "model", device=device, dtype=dtype)
    counts = freeze_all_but(lens, list(TRAINABLE_PARTS))  # stage 2 trains every part
    lens.sam.image_encoder.requires_grad_(False)
    policy = PolicyModel(lens)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-6)
    reference = None
    if args.beta > 0:
        ref_model, _ = load_model(work / "model", device=device, dtype=dtype, load_processor=False)
        reference = ref_model.mllm.requires_grad_(False).eval()
    context_pass = lens.lens_config.context_pass
    answer_format = lens.lens_config.prompt.answer_format
    pad, eos = special_token_ids(processor.tokenizer)
    sampling = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=0.9,
        top_p=0.9,
        top_k=50,
        eos_token_ids=eos,
        pad_token_id=pad,
        context_pass=context_pass,
    )

    def one_step(seed: int) -> tuple[dict[str, float], dict]:
        t: dict[str, float] = {}
        torch.manual_seed(seed)
        start = time.perf_counter()
        prompts, failed = prepare_prompts(records, processor, lens.lens_config, max_prompt_length=2048)
        if failed or prompts is None:
            raise SystemExit(f"could not prepare the prompts: {failed}")
        t["prepare prompts"] = time.perf_counter() - start

        lens.eval()
        start = time.perf_counter()
        ro = generate_rollouts(lens, processor, prompts, G, **sampling)
        sync()
        wall = time.perf_counter() - start
        lens.train()
        lens.sam.image_encoder.eval()
        t["rollout/generate"] = ro.timings["generate"]
        t["rollout/context+SAM"] = wall - ro.timings["generate"]

        start = time.perf_counter()
        samples = rollout_samples(prompts, ro, answer_format)
        total, _ = score(samples, DEFAULT_REWARD_WEIGHTS)
        advantages = group_advantages(torch.as_tensor(total, dtype=torch.float32), G, eps=1e-4)
        rollout_ious(samples)
        t["rewards"] = time.perf_counter() - start

        ref_logp = None
        if reference is not None:
            start = time.perf_counter()
            ref_logp = reference_logp(reference, ro, prompts, 0.9)
            sync()
            t["reference"] = time.perf_counter() - start
        else:
            t["reference"] = 0.0

        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        logp, low_res = policy(
            ro.sequences,
            ro.attention_mask,
            ro.mm_token_type_ids,
            prompts.pixel_values.to(device),
            prompts.image_grid_thw.to(device),
            ro.rows,
            ro.prompt_length,
            ro.sam_features,
            0.9,
            vision_grad=True,
        )
        pol = grpo_loss(
            logp,
            logp.detach(),
            ref_logp,
            advantages.to(device),
            ro.completion_mask.to(logp.dtype),
            clip_eps=0.2,
            beta=args.beta,
            aggregation="sequence",
        )
        gt = [torch.from_numpy(prompts.gt_masks[i]).to(device) for i in ro.rows.tolist()]
        seg = mask_loss(low_res, gt, dice_weight=1.0, pixel_weight=1.0, pixel_loss="bce")
        loss = pol["loss"] + 1.0 * seg["loss"]
        sync()
        forward = time.perf_counter() - start
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        sync()
        t["train"] = time.perf_counter() - start
        t["train/forward+losses"] = forward
        info = {
            "prompt_length": ro.prompt_length,
            "lengths": ro.completion_mask.sum(1).float(),
            "ended": int((~ro.truncated).sum()),
            "loss": float(loss.detach()),
            "rewards": total,
            "n_image": int((prompts.input_ids[0] == lens.mllm.config.image_token_id).sum()),
            "prompts": prompts,
        }
        return t, info

    for i in range(args.warmup):
        one_step(args.seed + 1000 + i)
    runs = [one_step(args.seed + i) for i in range(args.repeats)]
    times = {name: statistics.median(r[0][name] for r in runs) for name in runs[0][0]}
    info = runs[-1][1]

    # Batched rollout and the two per-completion loops back to back, round by round, so that a load change on the
    # machine hits all alike; same prompts, same model (the weights the timed steps left).
    modes = ("batched rollout", "per-row loop, shared encoders", "naive per-sample loop")
    loop_times = {name: [] for name in modes}
    loop_lengths = {name: [] for name in modes}
    loop_ended = {name: 0 for name in modes}
    if args.loop_repeats > 0:
        prompts = info["prompts"]
        lens.eval()
        for i in range(args.loop_repeats):
            for name in modes:
                torch.manual_seed(args.seed + i)
                start = time.perf_counter()
                if name == "batched rollout":
                    ro = generate_rollouts(lens, processor, prompts, G, **sampling)
                    done = list(zip(ro.completion_mask.sum(1).tolist(), (~ro.truncated).tolist(), ro.pred_masks))
                elif name == "per-row loop, shared encoders":
                    done = per_row_rollouts(lens, processor, prompts, G, sampling)
                else:
                    outs = sequential_rollouts(lens, processor, prompts, G, **sampling)
                    done = [(float(o.completion_mask.sum()), bool((~o.truncated).all()), None) for o in outs]
                sync()
                loop_times[name].append(time.perf_counter() - start)
                loop_lengths[name] += [n for n, _, _ in done]
                loop_ended[name] += sum(e for _, e, _ in done)

    text = lens.mllm.config.text_config
    n_rows = args.prompts * G
    print(f"device {device}, dtype {args.dtype}, torch threads {torch.get_num_threads()}")
    print(
        f"tiny LENS (random weights): LLM hidden {text.hidden_size}, layers {text.num_hidden_layers}; vision depth "
        f"{lens.mllm.config.vision_config.depth}; {lens.lens_config.num_queries} queries; SAM2 input "
        f"{lens.lens_config.sam.image_size} px; context pass {context_pass}"
    )
    print("trainable: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()) + " (SAM2 image encoder frozen)")
    print(
        f"step: K={args.prompts} prompts x G={G} = {n_rows} completions; prompt {info['prompt_length']} tokens "
        f"({info['n_image']} image), completions up to {args.max_new_tokens} new tokens; beta {args.beta}; "
        f"{args.repeats} timed steps after {args.warmup} warm-up"
    )
    step = sum(times[p] for p in PHASES)
    print(f"\n{'phase':<26}{'median s':>10}{'share':>9}")
    for name in PHASES:
        if name == "reference" and reference is None:
            print(f"{name:<26}{'skipped (--beta 0)':>19}")
            continue
        print(f"{name:<26}{times[name]:>10.3f}{times[name] / step:>9.1%}")
        if name == "train":
            fwd = times["train/forward+losses"]
            print(f"{'  forward + losses':<26}{fwd:>10.3f}{fwd / step:>9.1%}")
            print(f"{'  backward + AdamW':<26}{times[name] - fwd:>10.3f}{(times[name] - fwd) / step:>9.1%}")
    print(f"{'step (sum of medians)':<26}{step:>10.3f}{1:>9.1%}")
    lengths = info["lengths"]
    print(
        f"\nlast step: mean completion {float(lengths.mean()):.1f} tokens, {info['ended']}/{n_rows} ended with an end "
        f"token; reward mean {float(np.mean(info['rewards'])):.3f}; loss {info['loss']:.4f}"
    )

    if args.loop_repeats > 0:
        median = {name: statistics.median(times) for name, times in loop_times.items()}
        print(
            f"\nrollout of {n_rows} completions (generate + context pass + SAM2 masks), same prompts and model, "
            f"{args.loop_repeats} back-to-back round{'s' if args.loop_repeats > 1 else ''} (medians):"
        )
        encodes = {
            "batched rollout": f"{args.prompts} image encodings",
            "per-row loop, shared encoders": f"{args.prompts} image encodings",
            "naive per-sample loop": f"{n_rows} image encodings",
        }
        for name in modes:
            lengths = loop_lengths[name]
            print(
                f"  {name:<30} {median[name]:>7.2f} s  ({encodes[name]}; mean completion {np.mean(lengths):.1f} "
                f"tokens, {loop_ended[name]}/{len(lengths)} ended with an end token)"
            )
        batched = median["batched rollout"]
        print(f"  batching alone (per-row loop, shared encoders / batched): {median[modes[1]] / batched:.1f}x")
        print(f"  batching + encoder reuse (naive per-sample loop / batched): {median[modes[2]] / batched:.1f}x")
        print(
            "  note: the untrained tiny model rarely emits an end token, so completions run (nearly) to "
            "--max-new-tokens in every mode: a fair comparison. A trained model's answers end early and unevenly;"
            " the batched generate then runs to its longest row, while the loops stop each row at its own end."
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
