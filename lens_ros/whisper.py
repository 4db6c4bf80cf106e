"""Spoken commands: microphone audio -> text with a transformers Whisper model (plain Python, no rclpy).

The node subscribes to `audio` as audio_common_msgs/AudioData (`uint8[] data`, raw PCM) — the message that
ros-drivers/audio_common's `audio_capture` publishes (run it with `format:=wave`), with the stream's layout from
`audio_info` (audio_common_msgs/AudioInfo) or the node's parameters. This module does everything after the bytes:

* `pcm_to_float`: raw PCM bytes (S16LE, S32LE, F32LE, U8, S8; interleaved channels; an optional WAV header) or an
  array -> mono float32 in [-1, 1];
* `resample`: to Whisper's 16 kHz (band-limited, FFT based);
* `UtteranceSegmenter`: cuts a continuous stream into utterances with an energy end-pointer;
* `WhisperTranscriber`: an utterance -> text (`WhisperForConditionalGeneration` + `WhisperProcessor`);
* `BackgroundWhisper`: a WhisperTranscriber loaded on its own thread, so that the node serves text commands at once
  and a model that cannot be had (offline, not in the cache) turns spoken commands off with one log line.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from pathlib import Path

import numpy as np

from lens_model.errors import LensError

LOG = logging.getLogger("lens_ros.whisper")

WHISPER_SAMPLE_RATE = 16000
# sample_format names as audio_common (GStreamer) writes them -> numpy dtype
SAMPLE_FORMATS = {"S16LE": "<i2", "S32LE": "<i4", "F32LE": "<f4", "U8": "u1", "S8": "i1"}


class AudioError(LensError):
    """Audio that cannot be decoded: unknown sample format, truncated frames, empty or silent input."""


def split_wav_header(data: bytes) -> tuple[dict | None, bytes]:
    """A chunk starting with a RIFF/WAVE header -> ({channels, sample_rate, sample_format}, PCM payload);
    any other chunk -> (None, data). audio_capture's `wave` format sends the header with the first chunk."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None, data
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise AudioError("WAV header: 'fmt ' chunk is truncated")
            code, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[body : body + 16])
            kinds = {(1, 8): "U8", (1, 16): "S16LE", (1, 32): "S32LE", (3, 32): "F32LE"}
            if (code, bits) not in kinds:
                raise AudioError(
                    f"WAV header: unsupported encoding (format code {code}, {bits} bits); "
                    f"supported: {sorted(kinds.values())}"
                )
            fmt = {"channels": channels, "sample_rate": rate, "sample_format": kinds[code, bits]}
        elif chunk_id == b"data":
            if fmt is None:
                raise AudioError("WAV header: 'data' chunk before 'fmt ' chunk")
            # streaming encoders write a placeholder size: take whatever follows
            return fmt, data[body:]
        pos = body + size + (size & 1)
    raise AudioError("WAV header without a 'data' chunk")


def pcm_to_float(data, sample_format: str = "S16LE", channels: int = 1) -> np.ndarray:
    """Raw interleaved PCM bytes (or an array: 1-D, or (samples, channels)) -> mono float32 in [-1, 1]."""
    if channels < 1:
        raise AudioError(f"channels must be >= 1, got {channels}")
    if isinstance(data, (bytes, bytearray, memoryview)):
        fmt = sample_format.upper()
        if fmt not in SAMPLE_FORMATS:
            raise AudioError(f"unsupported sample format {sample_format!r}; supported: {', '.join(SAMPLE_FORMATS)}")
        dtype = np.dtype(SAMPLE_FORMATS[fmt])
        frame = dtype.itemsize * channels
        if len(data) % frame:
            raise AudioError(
                f"{len(data)} bytes is not a whole number of {fmt} frames of {channels} channel(s) ({frame} bytes each)"
            )
        samples = np.frombuffer(bytes(data), dtype=dtype).reshape(-1, channels)
    else:
        samples = np.asarray(data)
        if samples.ndim == 1:
            samples = samples.reshape(-1, 1)
        elif samples.ndim != 2:
            raise AudioError(f"audio array must be 1-D or (samples, channels), got shape {samples.shape}")
    if samples.dtype.kind == "f":
        mono = samples.astype(np.float32).mean(axis=1)
    elif samples.dtype.kind == "u":
        half = float(np.iinfo(samples.dtype).max + 1) / 2
        mono = ((samples.astype(np.float64) - half) / half).mean(axis=1).astype(np.float32)
    elif samples.dtype.kind == "i":
        mono = (samples.astype(np.float64) / -float(np.iinfo(samples.dtype).min)).mean(axis=1).astype(np.float32)
    else:
        raise AudioError(f"unsupported audio array dtype {samples.dtype}")
    if not np.isfinite(mono).all():
        raise AudioError("audio holds NaN or infinite samples")
    return np.clip(mono, -1.0, 1.0)


def resample(audio: np.ndarray, orig_rate: int, target_rate: int = WHISPER_SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling (FFT: content above the lower Nyquist frequency is removed, no aliasing)."""
    if orig_rate <= 0 or target_rate <= 0:
        raise AudioError(f"sample rates must be positive, got {orig_rate} -> {target_rate}")
    audio = np.asarray(audio, dtype=np.float32)
    if orig_rate == target_rate or audio.size == 0:
        return audio
    n_in = audio.shape[0]
    n_out = max(1, int(round(n_in * target_rate / orig_rate)))
    spectrum = np.fft.rfft(audio.astype(np.float64))
    keep = min(spectrum.shape[0], n_out // 2 + 1)
    out_spectrum = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    out_spectrum[:keep] = spectrum[:keep]
    return (np.fft.irfft(out_spectrum, n=n_out) * (n_out / n_in)).astype(np.float32)


class UtteranceSegmenter:
    """Energy end-pointer for a continuous microphone stream: `feed(chunk)` returns the utterances it completed.

    An utterance starts at the first frame (`frame_s`) whose RMS reaches `threshold` (full scale 1.0), keeps
    `pre_roll_s` of audio before it, and ends after `silence_s` below the threshold (or at `max_utterance_s`).
    Bursts shorter than `min_speech_s` of loud frames (clicks, bumps) are dropped.
    """

    def __init__(
        self,
        sample_rate: int,
        threshold: float = 0.02,
        silence_s: float = 0.8,
        min_speech_s: float = 0.25,
        max_utterance_s: float = 20.0,
        frame_s: float = 0.03,
        pre_roll_s: float = 0.3,
    ) -> None:
        if sample_rate <= 0:
            raise AudioError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate = sample_rate
        self.threshold = threshold
        self.frame = max(1, int(round(frame_s * sample_rate)))
        self.silence_frames = max(1, int(round(silence_s * sample_rate / self.frame)))
        self.min_speech_frames = max(1, int(round(min_speech_s * sample_rate / self.frame)))
        self.max_frames = max(1, int(round(max_utterance_s * sample_rate / self.frame)))
        self.pre_roll_frames = int(round(pre_roll_s * sample_rate / self.frame))
        self.reset()

    def reset(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)  # samples short of a whole frame
        self._pre_roll: list[np.ndarray] = []
        self._frames: list[np.ndarray] = []  # the utterance in progress
        self._loud = 0  # loud frames in it
        self._quiet_run = 0  # trailing quiet frames

    @property
    def in_utterance(self) -> bool:
        return bool(self._frames)

    def feed(self, audio: np.ndarray) -> list[np.ndarray]:
        data = np.concatenate([self._pending, np.asarray(audio, dtype=np.float32)])
        whole = data.shape[0] // self.frame * self.frame
        self._pending = data[whole:]
        done = []
        for start in range(0, whole, self.frame):
            frame = data[start : start + self.frame]
            loud = float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))) >= self.threshold
            if not self._frames:
                if loud:
                    self._frames = [*self._pre_roll, frame]
                    self._pre_roll, self._loud, self._quiet_run = [], 1, 0
                elif self.pre_roll_frames:
                    self._pre_roll = (self._pre_roll + [frame])[-self.pre_roll_frames :]
                continue
            self._frames.append(frame)
            self._loud += loud
            self._quiet_run = 0 if loud else self._quiet_run + 1
            if self._quiet_run >= self.silence_frames or len(self._frames) >= self.max_frames:
                utterance = self._finish()
                if utterance is not None:
                    done.append(utterance)
        return done

    def flush(self) -> np.ndarray | None:
        """End of stream: the utterance in progress, if it holds enough speech."""
        return self._finish() if self._frames else None

    def _finish(self) -> np.ndarray | None:
        frames, loud = self._frames, self._loud
        if self._quiet_run:
            frames = frames[: len(frames) - max(0, self._quiet_run - self.pre_roll_frames)]  # keep a short tail
        self._frames, self._loud, self._quiet_run = [], 0, 0
        return np.concatenate(frames) if loud >= self.min_speech_frames else None


class WhisperTranscriber:
    """`WhisperTranscriber.from_pretrained("openai/whisper-small").transcribe(pcm_bytes, 48000)` -> "the red cup"."""

    def __init__(
        self, model, processor, language: str | None = None, task: str = "transcribe", max_new_tokens: int = 96
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.language = self._check_language(language or None)
        self.task = task
        self.max_new_tokens = max_new_tokens
        self.sample_rate = int(processor.feature_extractor.sampling_rate)
        self.max_seconds = float(processor.feature_extractor.n_samples) / self.sample_rate  # 30 s window

    def _check_language(self, language: str | None) -> str | None:
        """A language code ("de") or name ("german") this model knows, as a code; None = detected."""
        if language is None:
            return None
        lang_to_id = getattr(self.model.generation_config, "lang_to_id", None) or {}
        if not getattr(self.model.generation_config, "is_multilingual", False) or not lang_to_id:
            raise AudioError(
                f"audio language {language!r} given, but this Whisper model is English-only; leave the language empty"
            )
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

        code = TO_LANGUAGE_CODE.get(language.lower(), language.lower())
        if f"<|{code}|>" not in lang_to_id:
            known = sorted(key[2:-2] for key in lang_to_id)
            raise AudioError(f"unknown audio language {language!r}; this model knows: {', '.join(known)}")
        return code

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        device: str = "auto",
        dtype: str = "auto",
        local_files_only: bool = False,
        **kwargs,
    ) -> WhisperTranscriber:
        """A local directory or a Hub id (from the Hugging Face cache, downloaded unless `local_files_only`)."""
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        from lens_model.devices import resolve_device, resolve_dtype

        dev = resolve_device(device)
        where = {"local_files_only": local_files_only}
        processor = WhisperProcessor.from_pretrained(str(name_or_path), **where)
        model = WhisperForConditionalGeneration.from_pretrained(
            str(name_or_path), dtype=resolve_dtype(dtype, dev), **where
        )
        return cls(model.to(dev), processor, **kwargs)

    def input_features(self, audio, sample_rate: int, sample_format: str = "S16LE", channels: int = 1):
        """PCM bytes (see `pcm_to_float`; a WAV header overrides the layout) or a float/int array -> the log-mel
        features Whisper reads, (1, n_mels, 3000) float32: mono, resampled to 16 kHz, padded to the 30 s window."""
        if isinstance(audio, (bytes, bytearray, memoryview)):
            header, payload = split_wav_header(bytes(audio))
            if header is not None:
                sample_rate, sample_format, channels = (
                    header["sample_rate"],
                    header["sample_format"],
                    header["channels"],
                )
            audio = pcm_to_float(payload, sample_format, channels)
        else:
            audio = pcm_to_float(audio)
        if audio.size == 0:
            raise AudioError("no audio samples to transcribe")
        audio = resample(audio, sample_rate, self.sample_rate)
        if audio.shape[0] > self.max_seconds * self.sample_rate:
            raise AudioError(
                f"utterance is {audio.shape[0] / self.sample_rate:.1f} s; Whisper hears at most "
                f"{self.max_seconds:.0f} s at a time"
            )
        return self.processor.feature_extractor(
            audio, sampling_rate=self.sample_rate, return_tensors="pt"
        ).input_features

    def transcribe(self, audio, sample_rate: int, sample_format: str = "S16LE", channels: int = 1) -> str:
        """Audio as `input_features` takes it -> text."""
        import torch

        features = self.input_features(audio, sample_rate, sample_format, channels)
        input_features = features.to(self.model.device, self.model.dtype)
        # the decoder prompt (start, language, task, no-timestamps) takes up to 4 of the model's positions
        limit = int(getattr(self.model.config, "max_target_positions", 448)) - 4
        kwargs = {"max_new_tokens": max(1, min(self.max_new_tokens, limit))}
        if getattr(self.model.generation_config, "is_multilingual", False):
            kwargs.update(task=self.task, **({"language": self.language} if self.language else {}))
        with torch.inference_mode():
            tokens = self.model.generate(input_features, **kwargs)
        return self.processor.batch_decode(tokens, skip_special_tokens=True)[0].strip()


def _looks_like_a_path(name: str) -> bool:
    return name.startswith(("/", "~", ".")) or os.path.isdir(os.path.expanduser(name))


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached (one TCP connection to its endpoint), or None when it can or a
    proxy is configured (the proxy decides)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host}:{port} cannot be reached: {exc}"
    return None


def whisper_unavailable_message(name: str, reason: str) -> str:
    """The one log line for a Whisper model that could not be loaded: what to download, and where it must go."""
    reason = reason.strip().splitlines()[0].split(". ")[0][:200] if reason.strip() else "unknown error"
    if _looks_like_a_path(name):
        return (
            f"spoken commands are off: audio_model {name!r} is not a directory holding a Whisper model ({reason}); "
            "text commands and the service work. Fill it with `hf download openai/whisper-small --local-dir "
            f"{name}` on a machine with internet, or set audio_enabled:=false"
        )
    from huggingface_hub import constants

    folder = "models--" + name.replace("/", "--")
    return (
        f"spoken commands are off: Whisper {name!r} is not in the Hugging Face cache and could not be downloaded "
        f"({reason}); text commands and the service work. To use speech offline, run `hf download {name}` on a "
        f"machine with internet and copy {folder} from its cache into {constants.HF_HUB_CACHE} here (or download "
        "with --local-dir DIR and set audio_model:=DIR), or set audio_enabled:=false"
    )


class BackgroundWhisper:
    """A `WhisperTranscriber` loaded on a thread of its own: `start()` returns at once, `transcribe` waits for the
    load. The Hugging Face cache (or a local directory) is tried first, then the Hub; a model that cannot be had
    is reported in one log line (`whisper_unavailable_message`), after which `failed` is true and `transcribe`
    returns "" — the caller keeps serving text.

        whisper = BackgroundWhisper("openai/whisper-small", device="cpu", log=node.get_logger())
        whisper.start()
        text = whisper.transcribe(audio, 48000)
    """

    def __init__(self, name: str, device: str = "auto", language: str | None = None, log=LOG) -> None:
        self.name = name
        self.device = device
        self.language = language or None
        self.log = log
        self.transcriber: WhisperTranscriber | None = None
        self.reason = ""  # why it failed
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self.transcriber is not None

    @property
    def failed(self) -> bool:
        return self._done.is_set() and self.transcriber is None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._load, name="lens-whisper-load", daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> WhisperTranscriber | None:
        """The transcriber once loaded; None if it failed or `timeout` seconds passed first."""
        self.start()
        self._done.wait(timeout)
        return self.transcriber

    def transcribe(self, audio, sample_rate: int, sample_format: str = "S16LE", channels: int = 1) -> str:
        transcriber = self.wait()
        if transcriber is None:
            return ""
        return transcriber.transcribe(audio, sample_rate, sample_format, channels)

    def _load(self) -> None:
        load = WhisperTranscriber.from_pretrained
        try:
            try:
                self.transcriber = load(self.name, self.device, language=self.language, local_files_only=True)
            except OSError:  # not in the cache (or not a model directory): the Hub is the last chance
                from huggingface_hub import constants

                if _looks_like_a_path(self.name) or constants.HF_HUB_OFFLINE:
                    raise
                unreachable = hub_unreachable()
                if unreachable:  # say so at once instead of a long series of retried requests
                    raise OSError(unreachable) from None
                self.log.info(f"Whisper {self.name} is not in the Hugging Face cache: downloading it")
                self.transcriber = load(self.name, self.device, language=self.language)
            self.log.info(f"Whisper {self.name} loaded: spoken commands are on")
        except AudioError as exc:  # e.g. a language the model does not know
            self.reason = str(exc)
            self.log.error(f"spoken commands are off: {exc}")
        except Exception as exc:  # noqa: BLE001 - text commands work without Whisper
            self.reason = f"{type(exc).__name__}: {exc}"
            self.log.error(whisper_unavailable_message(self.name, self.reason))
        finally:
            self._done.set()
