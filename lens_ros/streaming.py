"""The model's text as it is generated (plain Python, no rclpy): feeds the Segment action's feedback.

`LensPipeline(image, prompt, streamer=TextSoFarStreamer(pipeline, callback))` calls `callback(text_so_far,
num_tokens)` while the MLLM generates, at most every `min_interval_s` seconds and once more at the end; the final
text equals the result's `text`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from transformers.generation.streamers import BaseStreamer

from lens_model.inference.prompting import decode_completion

log = logging.getLogger(__name__)


class TextSoFarStreamer(BaseStreamer):
    def __init__(self, pipeline, callback: Callable[[str, int], None], min_interval_s: float = 0.1) -> None:
        self.tokenizer = pipeline.processor.tokenizer
        self.pad_token_id, self.eos_token_ids = pipeline.pad_token_id, pipeline.eos_token_ids
        self.callback = callback
        self.min_interval_s = min_interval_s
        self.tokens: list[int] = []
        self.num_tokens = 0
        self.errors: list[Exception] = []  # the callback's failures: they never stop generation
        self._prompt_seen = False
        self._last_sent = float("-inf")
        self._sent_text: str | None = None

    @property
    def text(self) -> str:
        return decode_completion(self.tokenizer, self.tokens, self.pad_token_id, self.eos_token_ids)  # as the result

    def put(self, value) -> None:
        ids = value.reshape(-1).tolist()
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        self.num_tokens += len(ids)
        self.tokens.extend(ids)
        now = time.monotonic()
        if now - self._last_sent >= self.min_interval_s:
            self._last_sent = now
            self._send()

    def end(self) -> None:
        self._send()

    def _send(self) -> None:
        text = self.text
        if text == self._sent_text:
            return
        self._sent_text = text
        try:
            self.callback(text, self.num_tokens)
        except Exception as exc:  # a failed feedback publish must not abort the segmentation
            self.errors.append(exc)
            log.warning("reasoning stream callback failed: %s", exc)
