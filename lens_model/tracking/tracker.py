"""Streaming SAM2 tracking of LENS targets: reason once, then follow the object frame by frame.

`StreamingTracker` runs SAM2's own video step (`SAM2Base.track_step`: memory attention over the memory bank and the
object pointers, mask decoder, memory encoder) on frames that arrive one at a time. It reproduces what
`sam2.SAM2VideoPredictor` computes for a mask prompt on a frame followed by `propagate_in_video` (tests/test_tracking.py
checks it frame by frame), without knowing the video in advance:

* one image-encoder pass per frame, shared by every target (each target then runs memory attention, the decoder and
  the memory encoder on its own, batch 1, as the video predictor does per object);
* a target starts from a mask (a LENS result's) on a frame; that frame is the target's conditioning frame, encoded
  into memory from the decoder-resolution mask as the predictor does before propagating;
* the bank keeps the conditioning frame and only the latest non-conditioning frames SAM2 can still read
  (`num_maskmem` spatial memories, `max_obj_ptrs_in_encoder` object pointers), so memory is flat on endless streams;
* memory features are stored in bfloat16 and the position encoding once, like the predictor's inference state.
Two options trade that exactness for CPU time (benchmarks/README.md, "tracking.py", measures both):
* `memory_frames=k` reads the conditioning frame and the k - 1 latest frames instead of SAM2's `num_maskmem` (7): the
  memory attention's cross-attention, the largest cost of a tracked frame on a CPU, shrinks with it. Each memory keeps
  its temporal encoding (slot "1 frame back" stays slot "1 frame back"), so frames tracked before the bank holds more
  than k frames are the predictor's exactly; later ones see less history (tests/test_tracking.py);
* `image_encoder`: a segmentation backend (an ONNX Runtime export) computes the image features instead of SAM2's
  torch image encoder; the features match within float rounding (tests/test_track_export.py).
Differences from the predictor, by choice: no hole filling of the low-res masks (`fill_hole_area`, a CUDA-only
post-processing in sam2) and no non-overlap constraint between targets (each target is independent). Starting a
target again (re-grounding) replaces its memory: the new LENS mask is the only conditioning frame.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.records import mask_box
from ..errors import LensError
from ..model.sam import MEMORY_MODULES

# ImageNet statistics on the 0..1 scale, as sam2's video-frame loader applies them
VIDEO_MEAN = (0.485, 0.456, 0.406)
VIDEO_STD = (0.229, 0.224, 0.225)


def preprocess_frame(frame: np.ndarray, image_size: int) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, S, S) float32, computed as sam2's video loader does (PIL's default resampling,
    0..1 scale, then ImageNet mean/std), so that tracking sees exactly the pixels SAM2VideoPredictor sees."""
    resized = np.asarray(Image.fromarray(frame).resize((image_size, image_size))) / 255.0  # float64, as sam2
    x = torch.from_numpy(resized).permute(2, 0, 1).float()
    x -= torch.tensor(VIDEO_MEAN).view(3, 1, 1)
    x /= torch.tensor(VIDEO_STD).view(3, 1, 1)
    return x


@dataclass
class TrackedMask:
    """One target on one frame."""

    target_id: str
    frame_index: int
    mask: np.ndarray  # (H, W) bool at the frame's resolution
    low_res_logits: torch.Tensor  # (1, S/4, S/4) float32 mask logits of SAM2's decoder (S = SAM2 image size)
    object_score: float  # SAM2's object-presence logit: > 0 means the object is in the frame
    box: tuple[float, float, float, float] | None  # tight xyxy box of `mask` in pixels, None when it is empty

    @property
    def present(self) -> bool:
        return self.object_score > 0

    @property
    def finite(self) -> bool:
        return bool(torch.isfinite(self.low_res_logits).all()) and bool(np.isfinite(self.object_score))


@dataclass
class MemoryBankStats:
    """What the tracker holds for all targets."""

    targets: int
    stored_frames: int  # conditioning + non-conditioning frame outputs over all targets
    tensor_bytes: int  # bytes of the stored tensors (the shared position encoding counted once)


@dataclass
class _Frame:
    """Image-encoder output of the latest frame, in SAM2's flattened layout."""

    index: int
    image_hw: tuple[int, int]
    vision_feats: list[torch.Tensor]  # per level (HW, 1, C), finest first
    vision_pos_embeds: list[torch.Tensor]  # same shapes
    feat_sizes: list[tuple[int, int]]


@dataclass
class _Target:
    start_frame: int
    image_hw: tuple[int, int]
    # SAM2's per-object output dict: frame index -> compact output (track_step reads it)
    output_dict: dict[str, dict[int, dict]] = field(
        default_factory=lambda: {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    )


class StreamingTracker:
    """`start(target_id, mask, frame)` then `track(frame) -> {target_id: TrackedMask}` for each new frame.

    sam: a SAM2Base with its memory modules (a LENS model's SAM2 after `sam_memory.attach_memory`).
    num_frames: length of the video when it is known in advance (a file); SAM2 then reads at most that many object
    pointers, as the offline predictor does. None (a camera stream): SAM2's configured maximum.
    autocast_dtype: bfloat16/float16 to run SAM2 under autocast (the LENS model's dtype on a GPU), None for float32.
    memory_frames: spatial memories read per tracked frame, the conditioning frame included (1..num_maskmem); None:
    SAM2's num_maskmem (7), as the video predictor. Fewer is cheaper and departs from SAM2 (see the module docstring).
    image_encoder: a segmentation backend (`lens_model.inference.backends`) whose `encode_images` computes the frame
    features, e.g. an ONNX Runtime export; None: `sam`'s own image encoder.
    """

    def __init__(
        self,
        sam,
        num_frames: int | None = None,
        autocast_dtype: torch.dtype | None = None,
        memory_frames: int | None = None,
        image_encoder=None,
    ) -> None:
        missing = [name for name in MEMORY_MODULES if not hasattr(sam, name)]
        if missing:
            raise LensError(
                f"SAM2 has no {', '.join(missing)}: attach memory modules first (lens_model.model.sam_memory)"
            )
        if memory_frames is not None and not 1 <= memory_frames <= sam.num_maskmem:
            raise LensError(
                f"memory_frames must be between 1 (the conditioning frame alone) and SAM2's num_maskmem "
                f"({sam.num_maskmem}), got {memory_frames}"
            )
        if image_encoder is not None and image_encoder.image_size != sam.image_size:
            raise LensError(
                f"the image encoder takes {image_encoder.image_size}-px images, SAM2 tracks at {sam.image_size} px: "
                "export the model at SAM2's image size"
            )
        self.sam = sam.eval()
        # The conditioning mask enters memory binarised, as sam2's video predictor is configured
        # (build_sam2_video_predictor's post-processing); the single-image path never encodes memory.
        self.sam.binarize_mask_from_pts_for_mem_enc = True
        self.num_frames = num_frames
        self.autocast_dtype = autocast_dtype
        self.memory_frames = memory_frames
        self.image_encoder = image_encoder
        self._position_encodings: list[torch.Tensor] | None = None  # per feature level; fixed by the image size
        self.targets: dict[str, _Target] = {}
        self._frame: _Frame | None = None
        self._next_index = 0
        self._maskmem_pos_enc: list[torch.Tensor] | None = None  # identical for every frame: stored once

    @classmethod
    def from_lens_model(
        cls, model, memory, num_frames: int | None = None, memory_frames: int | None = None
    ) -> StreamingTracker:
        """Tracker on a LensModel's SAM2 with SAM2's memory parts attached to it. `memory`: a SamMemory
        (sam_memory.load_sam_memory: the memory modules run in torch) or an exported backend (`OnnxRuntimeBackend`,
        `TensorRTBackend`) whose export holds the tracking graphs: memory attention and memory encoder then run
        there, and so does the image encoder (on the runtime the backend chose for it); SAM2's prompt encoder and
        mask decoder stay the model's own (torch)."""
        from ..model.sam_memory import SamMemory, attach_memory

        image_encoder = None
        if isinstance(memory, SamMemory):
            attach_memory(model.sam, memory)
        else:
            from ..export.memory_runtime import use_exported_memory_modules

            use_exported_memory_modules(model.sam, memory)
            image_encoder = memory
        low_precision = model.dtype if model.dtype in (torch.bfloat16, torch.float16) else None
        return cls(
            model.sam,
            num_frames=num_frames,
            autocast_dtype=low_precision,
            memory_frames=memory_frames,
            image_encoder=image_encoder,
        )

    # ------------------------------------------------------------------ public
    @property
    def image_size(self) -> int:
        return self.sam.image_size

    @property
    def frame_index(self) -> int | None:
        """Index of the latest encoded frame (frames count from 0 in arrival order)."""
        return None if self._frame is None else self._frame.index

    @torch.inference_mode()
    def start(self, target_id: str, mask: np.ndarray, frame: np.ndarray | None = None) -> TrackedMask:
        """Start (or restart) tracking `target_id` from `mask` (H, W) bool on `frame` (H, W, 3) uint8 RGB, which
        becomes a new frame; frame=None uses the latest frame (after `track`, to re-ground without a second image
        encoder pass). Any earlier memory of the target is dropped."""
        if frame is not None:
            self._encode(frame)
        elif self._frame is None:
            raise LensError("start() without a frame needs an earlier frame: pass the frame the mask belongs to")
        current = self._frame
        mask = np.asarray(mask)
        if mask.shape != current.image_hw:
            raise LensError(f"mask of shape {mask.shape} for a frame of size {current.image_hw}; they must be equal")
        target = _Target(start_frame=current.index, image_hw=current.image_hw)
        self.targets[target_id] = target
        with self._autocast():
            mask_inputs = self._mask_input(mask)
            out = self._track_step(current, target, mask_inputs)
            # As the predictor before propagating: memory from the decoder-resolution mask, treated as user input.
            high_res = F.interpolate(
                out["pred_masks"], size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
            out["maskmem_features"], out["maskmem_pos_enc"] = self.sam._encode_new_memory(
                current_vision_feats=current.vision_feats,
                feat_sizes=current.feat_sizes,
                pred_masks_high_res=high_res,
                object_score_logits=out["object_score_logits"],
                is_mask_from_pts=True,
            )
        target.output_dict["cond_frame_outputs"][current.index] = self._compact(out)
        return self._result(target_id, current, out)

    def _track_step(self, current, target, mask_inputs: torch.Tensor | None = None) -> dict:
        """SAM2's track_step on `current` for `target`: a start frame when given a mask (its memory is encoded by
        the caller, as the video predictor does), otherwise a tracked frame that encodes its own memory."""
        start = mask_inputs is not None
        with self._memory_window():
            return self.sam.track_step(
                frame_idx=current.index,
                is_init_cond_frame=start,
                current_vision_feats=current.vision_feats,
                current_vision_pos_embeds=current.vision_pos_embeds,
                feat_sizes=current.feat_sizes,
                point_inputs=None,
                mask_inputs=mask_inputs,
                output_dict=target.output_dict,
                num_frames=self._num_frames(),
                run_mem_encoder=not start,
            )

    @contextmanager
    def _memory_window(self):
        """SAM2 reads `memory_frames` spatial memories during the block: num_maskmem = k, and the temporal encodings
        re-indexed so that each memory keeps its own (SAM2 gives frame t-j slot j-1 and the conditioning frame
        slot num_maskmem-1: the window keeps slots 0..k-2 and the conditioning frame's)."""
        sam, k = self.sam, self.memory_frames
        if k is None or k == sam.num_maskmem:
            yield
            return
        full_count, full_tpos = sam.num_maskmem, sam.maskmem_tpos_enc
        window = torch.cat([full_tpos[: k - 1], full_tpos[-1:]])
        sam.num_maskmem, sam.maskmem_tpos_enc = k, torch.nn.Parameter(window, requires_grad=False)
        try:
            yield
        finally:
            sam.num_maskmem, sam.maskmem_tpos_enc = full_count, full_tpos

    @torch.inference_mode()
    def track(self, frame: np.ndarray) -> dict[str, TrackedMask]:
        """Encode `frame` (H, W, 3) uint8 RGB once and follow every target into it."""
        current = self._encode(frame)
        results = {}
        for target_id, target in self.targets.items():
            if current.image_hw != target.image_hw:
                raise LensError(
                    f"frame {current.index} is {current.image_hw[1]}x{current.image_hw[0]}, target {target_id!r} was "
                    f"started on {target.image_hw[1]}x{target.image_hw[0]}: restart it on the new frame size"
                )
            with self._autocast():
                out = self._track_step(current, target)
            target.output_dict["non_cond_frame_outputs"][current.index] = self._compact(out)
            self._prune(target, current.index + 1)
            results[target_id] = self._result(target_id, current, out)
        return results

    def remove(self, target_id: str) -> None:
        """Stop tracking `target_id` (no-op when it is not tracked)."""
        self.targets.pop(target_id, None)

    def reset(self) -> None:
        """Forget every target and the cached frame; frame numbering starts again at 0."""
        self.targets.clear()
        self._frame = None
        self._next_index = 0

    def memory_stats(self) -> MemoryBankStats:
        stored, nbytes = 0, 0
        for target in self.targets.values():
            for outputs in target.output_dict.values():
                stored += len(outputs)
                for out in outputs.values():
                    nbytes += sum(
                        t.numel() * t.element_size() for k, t in out.items() if k != "maskmem_pos_enc" and t is not None
                    )
        if self._maskmem_pos_enc is not None:
            nbytes += sum(t.numel() * t.element_size() for t in self._maskmem_pos_enc)
        return MemoryBankStats(targets=len(self.targets), stored_frames=stored, tensor_bytes=nbytes)

    def lookback(self) -> int:
        """How many frames before the next one SAM2 can read: older non-conditioning outputs are never used."""
        sam = self.sam
        stride = sam.memory_temporal_stride_for_eval
        slots = self.memory_frames or sam.num_maskmem
        # spatial memories: t-1, then every stride-th frame from t-2 back (SAM2Base._prepare_memory_conditioned...)
        spatial = 1 + stride * (slots - 2) if slots > 2 else min(slots - 1, 1)
        pointers = sam.max_obj_ptrs_in_encoder - 1 if sam.use_obj_ptrs_in_encoder else 0
        return max(spatial, pointers, 0)

    # ------------------------------------------------------------------ internals
    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.sam.no_mem_embed.device.type, dtype=self.autocast_dtype)

    def _num_frames(self) -> int:
        return self.num_frames if self.num_frames is not None else sys.maxsize

    def _encode(self, frame: np.ndarray) -> _Frame:
        """(H, W, 3) uint8 RGB -> image-encoder features, cached as the latest frame."""
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise LensError(f"frame of shape {frame.shape} and dtype {frame.dtype}; expected HxWx3 uint8 RGB")
        device = self.sam.no_mem_embed.device
        image = preprocess_frame(frame, self.image_size)[None].to(device)  # (1, 3, S, S)
        if self.image_encoder is not None:
            feats, pos, sizes = self._backend_features(image)
        else:
            with self._autocast():
                backbone_out = self.sam.forward_image(image)
                _, feats, pos, sizes = self.sam._prepare_backbone_features(backbone_out)
        self._frame = _Frame(self._next_index, tuple(frame.shape[:2]), feats, pos, sizes)
        self._next_index += 1
        return self._frame

    def _backend_features(self, image: torch.Tensor):
        """`image_encoder`'s features in SAM2's flattened layout -> (feats, position encodings, sizes), as
        `SAM2Base._prepare_backbone_features` returns them. The exported encoder adds SAM2's `no_mem_embed` for
        single images (`model.sam.encode_image`); tracked frames take the features without it."""
        features = self.image_encoder.encode_images(image)
        embed = features.image_embed.to(self.sam.no_mem_embed.device)
        if self.sam.directly_add_no_mem_embed:
            embed = embed - self.sam.no_mem_embed.view(1, -1, 1, 1).to(embed.dtype)
        levels = [*(f.to(embed.device) for f in features.high_res_feats), embed]  # finest first, (1, C, h, w)
        if self._position_encodings is None:  # SAM2's sine encoding depends only on each level's size
            encode = self.sam.image_encoder.neck.position_encoding
            width = self.sam.image_encoder.neck.d_model
            self._position_encodings = [
                encode(torch.zeros(1, width, *x.shape[-2:], device=embed.device)).flatten(2).permute(2, 0, 1)
                for x in levels
            ]
        feats = [x.flatten(2).permute(2, 0, 1) for x in levels]  # (HW, 1, C)
        return feats, self._position_encodings, [tuple(x.shape[-2:]) for x in levels]

    def _mask_input(self, mask: np.ndarray) -> torch.Tensor:
        """(H, W) bool -> (1, 1, S, S) float {0, 1}, resized as SAM2VideoPredictor.add_new_mask does."""
        device = self.sam.no_mem_embed.device
        m = torch.as_tensor(mask.astype(bool), device=device)[None, None].float()
        if m.shape[-2:] == (self.image_size, self.image_size):
            return m
        size = (self.image_size, self.image_size)
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False, antialias=True)
        return (m >= 0.5).float()

    def _compact(self, out: dict) -> dict:
        """What later frames read from this frame's output (SAM2VideoPredictor keeps the same, bf16 features)."""
        features = out["maskmem_features"]
        if self._maskmem_pos_enc is None and out["maskmem_pos_enc"] is not None:
            self._maskmem_pos_enc = [x[0:1].clone() for x in out["maskmem_pos_enc"]]
        return {
            "maskmem_features": None if features is None else features.to(torch.bfloat16),
            "maskmem_pos_enc": self._maskmem_pos_enc,
            "pred_masks": out["pred_masks"],
            "obj_ptr": out["obj_ptr"],
            "object_score_logits": out["object_score_logits"],
        }

    def _prune(self, target: _Target, next_index: int) -> None:
        """Drop non-conditioning outputs older than anything SAM2 reads when tracking frame `next_index`."""
        oldest = next_index - self.lookback()
        stale = [t for t in target.output_dict["non_cond_frame_outputs"] if t < oldest]
        for t in stale:
            del target.output_dict["non_cond_frame_outputs"][t]

    def _result(self, target_id: str, frame: _Frame, out: dict) -> TrackedMask:
        low_res = out["pred_masks"].float()  # (1, 1, S/4, S/4)
        logits = F.interpolate(low_res, size=frame.image_hw, mode="bilinear", align_corners=False)[0, 0]
        mask = (logits > 0).cpu().numpy()
        return TrackedMask(
            target_id=target_id,
            frame_index=frame.index,
            mask=mask,
            low_res_logits=low_res[0].cpu(),
            object_score=float(out["object_score_logits"].float().reshape(-1)[0]),
            box=mask_box(mask),
        )
