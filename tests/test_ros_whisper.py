"""Spoken commands without ROS: PCM decoding, resampling, the utterance end-pointer, and a tiny Whisper built
here (random weights, no download) transcribing through the real transformers model and processor."""

import struct
import time

import numpy as np
import pytest
from ros_helpers import make_tiny_whisper, wav_bytes

from lens_ros.whisper import (
    AudioError,
    BackgroundWhisper,
    UtteranceSegmenter,
    WhisperTranscriber,
    pcm_to_float,
    resample,
    split_wav_header,
)


def _tone(freq, seconds, rate, amplitude=0.5):
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(audio, rate):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return np.fft.rfftfreq(audio.size, 1 / rate)[int(spectrum.argmax())]


# --- decoding ---


def test_s16le_bytes_become_float_in_minus_one_to_one():
    pcm = np.array([0, 16384, -32768, 32767], "<i2").tobytes()
    assert np.allclose(pcm_to_float(pcm, "S16LE"), [0.0, 0.5, -1.0, 32767 / 32768])


@pytest.mark.parametrize(
    "fmt,dtype,scale,offset",
    [("S32LE", "<i4", 2**31, 0), ("F32LE", "<f4", 1, 0), ("U8", "u1", 128, 128), ("S8", "i1", 128, 0)],
)
def test_other_sample_formats(fmt, dtype, scale, offset):
    values = np.array([0.25, -0.5, 0.0, -1.0])
    raw = (values * scale + offset).astype(dtype).tobytes()
    assert np.allclose(pcm_to_float(raw, fmt), values, atol=1e-6)


def test_8_bit_samples_are_centred_on_their_zero_code():
    """U8 (WAV's 8-bit PCM) is offset binary with silence at code 128, S8 two's complement with silence at 0; both
    span 256 codes, so one code is 1/128: 0 -> -1, 128 -> 0, 255 -> 127/128 (a centre at 127.5 is 1/256 off)."""
    codes = np.array([0, 64, 128, 192, 255], np.uint8)
    assert pcm_to_float(codes.tobytes(), "U8").tolist() == [-1.0, -0.5, 0.0, 0.5, 127 / 128]
    assert pcm_to_float((codes.astype(np.int16) - 128).astype(np.int8).tobytes(), "S8").tolist() == [
        -1.0,
        -0.5,
        0.0,
        0.5,
        127 / 128,
    ]
    assert pcm_to_float(np.full(480, 128, np.uint8)).max() == 0.0  # U8 silence decodes to silence


def test_interleaved_channels_are_averaged_to_mono():
    stereo = np.array([[16384, 0], [-16384, -16384]], "<i2").tobytes()  # L, R, L, R
    assert np.allclose(pcm_to_float(stereo, "S16LE", channels=2), [0.25, -0.5])


def test_arrays_are_accepted_as_they_are():
    assert np.allclose(pcm_to_float(np.array([1000, -1000], np.int16)), [1000 / 32768, -1000 / 32768])
    assert np.allclose(pcm_to_float(np.array([[0.2, 0.4]], np.float32)), [0.3])


@pytest.mark.parametrize(
    "data,kwargs,match",
    [
        (b"\x00\x01\x02", {}, "not a whole number of S16LE frames"),
        (b"\x00" * 6, {"channels": 4}, "not a whole number"),
        (b"\x00\x00", {"sample_format": "MP3"}, "unsupported sample format"),
        (np.zeros((2, 2, 2)), {}, "1-D or"),
        (np.array([np.nan], np.float32), {}, "NaN"),
    ],
)
def test_bad_audio_is_refused_with_the_reason(data, kwargs, match):
    with pytest.raises(AudioError, match=match):
        pcm_to_float(data, **kwargs)


def test_wav_header_is_split_off_and_read():
    audio = _tone(440, 0.1, 22050)
    header, payload = split_wav_header(wav_bytes(audio, 22050))
    assert header == {"channels": 1, "sample_rate": 22050, "sample_format": "S16LE"}
    assert np.allclose(pcm_to_float(payload), audio, atol=1 / 32767)
    assert split_wav_header(b"\x01\x02\x03\x04") == (None, b"\x01\x02\x03\x04")
    adpcm = b"RIFF" + struct.pack("<I", 36) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 2, 1, 8000, 4000, 2, 4)
    with pytest.raises(AudioError, match="unsupported encoding"):
        split_wav_header(adpcm + b"data" + struct.pack("<I", 0))


# --- resampling ---


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_to_16k_keeps_length_and_pitch(rate):
    audio = _tone(440, 1.0, rate)
    out = resample(audio, rate, 16000)
    assert out.dtype == np.float32 and out.shape == (16000,)
    assert abs(_peak_hz(out, 16000) - 440) < 2
    assert np.sqrt(np.mean(out**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_downsampling_removes_content_above_the_new_nyquist_instead_of_aliasing_it():
    audio = _tone(11000, 1.0, 48000)  # above 8 kHz: naive decimation would fold it to 5 kHz
    out = resample(audio, 48000, 16000)
    assert np.sqrt(np.mean(out**2)) < 0.01


def test_resample_is_identity_at_the_same_rate_and_refuses_bad_rates():
    audio = _tone(300, 0.2, 16000)
    assert resample(audio, 16000, 16000) is not None and np.array_equal(resample(audio, 16000, 16000), audio)
    with pytest.raises(AudioError, match="positive"):
        resample(audio, 0, 16000)


# --- end-pointing a continuous stream ---


def _stream(rate):
    silence = np.zeros(int(0.5 * rate), np.float32)
    word = _tone(220, 0.6, rate, amplitude=0.3)
    click = _tone(1000, 0.03, rate, amplitude=0.5)
    long_gap = np.zeros(int(1.2 * rate), np.float32)
    return np.concatenate([silence, word, long_gap, click, long_gap, word, np.zeros(int(0.3 * rate), np.float32)])


@pytest.mark.parametrize("chunk", [160, 1024, 48000])
def test_segmenter_finds_the_utterances_whatever_the_chunk_size_and_drops_clicks(chunk):
    rate = 16000
    seg = UtteranceSegmenter(rate, threshold=0.05, silence_s=0.8, min_speech_s=0.25, pre_roll_s=0.1)
    stream = _stream(rate)
    found = []
    for start in range(0, stream.size, chunk):
        found += seg.feed(stream[start : start + chunk])
    assert len(found) == 1  # the first word; the click is too short; the second word has not ended yet
    assert seg.in_utterance
    last = seg.flush()
    assert last is not None and not seg.in_utterance
    for utterance in (found[0], last):
        seconds = utterance.size / rate
        assert 0.6 <= seconds <= 0.6 + 0.1 + 0.15  # the word, its pre-roll and a short tail; no long silence
        assert np.sqrt(np.mean(utterance**2)) > 0.1


def test_an_utterance_starts_pre_roll_s_before_its_first_loud_frame():
    """Speech begins quieter than the threshold (a soft onset): the pre-roll keeps the audio before the frame that
    crossed it. The utterance's first sample is pre_roll_s (to a frame) before the word's first loud frame."""
    rate, frame_s, pre_roll_s = 16000, 0.03, 0.3
    frame = int(frame_s * rate)
    rng = np.random.default_rng(0)
    lead_in = (0.01 * rng.standard_normal(int(1.0 * rate))).astype(np.float32)  # quiet, every sample distinct
    word = _tone(220, 0.6, rate, amplitude=0.3)
    stream = np.concatenate([lead_in, word, np.zeros(rate, np.float32)])
    seg = UtteranceSegmenter(rate, threshold=0.05, silence_s=0.5, frame_s=frame_s, pre_roll_s=pre_roll_s)
    (utterance,) = seg.feed(stream)
    start = int(np.flatnonzero(stream == utterance[0])[0])  # where the utterance begins in the stream
    assert np.array_equal(utterance[:1000], stream[start : start + 1000])
    first_loud = lead_in.size // frame * frame  # the frame the word begins in is loud (2/3 of it is the tone)
    assert first_loud - start == int(round(pre_roll_s / frame_s)) * frame  # 10 frames of 480 samples
    assert start > 0


def test_segmenter_cuts_an_endless_utterance_at_the_maximum():
    rate = 8000
    seg = UtteranceSegmenter(rate, threshold=0.05, max_utterance_s=2.0, pre_roll_s=0.0)
    out = seg.feed(_tone(300, 5.0, rate, amplitude=0.3))
    assert [round(u.size / rate, 1) for u in out] == [2.0, 2.0]


# --- Whisper ---


@pytest.fixture(scope="module")
def tiny_whisper_dir(tmp_path_factory):
    return make_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny-whisper")


@pytest.fixture(scope="module")
def tiny_whisper(tiny_whisper_dir):
    return WhisperTranscriber.from_pretrained(tiny_whisper_dir, device="cpu", max_new_tokens=6)


def test_tiny_whisper_is_a_real_transformers_whisper_saved_locally(tiny_whisper):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    assert isinstance(tiny_whisper.model, WhisperForConditionalGeneration)
    assert isinstance(tiny_whisper.processor, WhisperProcessor)
    assert tiny_whisper.sample_rate == 16000 and tiny_whisper.max_seconds == 30


def _feature_gap(a, b) -> float:
    """Largest absolute difference of two (1, n_mels, frames) log-mel inputs (Whisper's scale: about -1.5..1.5)."""
    return float((a - b).abs().max())


def test_every_audio_path_reaches_the_model_as_the_same_features(tiny_whisper):
    # The tiny Whisper writes the same few tokens for any sound, so its text cannot tell the paths apart: compare
    # what it is given. The same 440 Hz tone as a 16 kHz array, 48 kHz S16LE bytes, a WAV file (whose header must
    # override the wrong rate passed in) and interleaved stereo: the same log-mel features up to resampling and
    # 16-bit quantisation (measured gap <= 0.002; a different sound differs by 1.7 to 2.8).
    audio16 = _tone(440, 1.0, 16000, amplitude=0.3)
    reference = tiny_whisper.input_features(audio16, 16000)
    assert tuple(reference.shape) == (1, tiny_whisper.processor.feature_extractor.feature_size, 3000)
    audio48 = _tone(440, 1.0, 48000, amplitude=0.3)
    pcm48 = (audio48 * 32767).astype("<i2").tobytes()
    stereo = np.repeat((audio48 * 32767).astype("<i2")[:, None], 2, axis=1).tobytes()
    paths = {
        "48 kHz bytes": tiny_whisper.input_features(pcm48, 48000),
        "WAV": tiny_whisper.input_features(wav_bytes(audio48, 48000), 8000),
        "stereo": tiny_whisper.input_features(stereo, 48000, channels=2),
    }
    for name, features in paths.items():
        assert _feature_gap(features, reference) < 0.01, name
    # ... and the features do depend on the sound: silence, noise, another pitch and a louder tone all differ
    rng = np.random.default_rng(0)
    others = {
        "silence": np.zeros(16000, np.float32),
        "noise": (0.3 * rng.standard_normal(16000)).astype(np.float32),
        "880 Hz": _tone(880, 1.0, 16000, amplitude=0.3),
        "shorter": _tone(440, 0.5, 16000, amplitude=0.3),
    }
    for name, audio in others.items():
        assert _feature_gap(tiny_whisper.input_features(audio, 16000), reference) > 0.5, name


def test_transcribe_decodes_the_features_it_is_given(tiny_whisper):
    text = tiny_whisper.transcribe(_tone(440, 1.0, 16000, amplitude=0.3), 16000)
    assert isinstance(text, str) and text  # random weights: some words, meaningless


def test_whisper_language_is_checked_and_reaches_generation(tiny_whisper):
    audio = _tone(440, 0.5, 16000, amplitude=0.3)
    model, processor = tiny_whisper.model, tiny_whisper.processor
    for language, code in (("de", "de"), ("German", "de"), ("german", "de"), ("EN", "en"), ("english", "en")):
        transcriber = WhisperTranscriber(model, processor, language=language, max_new_tokens=4)
        assert transcriber.language == code, language
    assert WhisperTranscriber(model, processor, language="").language is None  # empty: detected
    assert isinstance(
        WhisperTranscriber(model, processor, language="de", max_new_tokens=4).transcribe(audio, 16000), str
    )
    with pytest.raises(AudioError, match="unknown audio language 'xx'.*de, en"):
        WhisperTranscriber(model, processor, language="xx")
    # generate() is handed the language: an unchecked unknown code fails inside transformers
    transcriber = WhisperTranscriber(model, processor, max_new_tokens=4)
    transcriber.language = "xx"
    with pytest.raises(ValueError, match="Unsupported language"):
        transcriber.transcribe(audio, 16000)


def test_transcribe_refuses_empty_and_too_long_audio(tiny_whisper):
    with pytest.raises(AudioError, match="no audio"):
        tiny_whisper.transcribe(b"", 16000)
    with pytest.raises(AudioError, match="at most 30 s"):
        tiny_whisper.transcribe(np.zeros(31 * 16000, np.float32), 16000)


# --- loading in the background (the node never waits for Whisper) ---


def _whisper_records(caplog):
    return [r for r in caplog.records if r.name == "lens_ros.whisper"]


def test_background_whisper_loads_on_its_own_thread_and_transcribes_like_the_model(tiny_whisper_dir, caplog):
    caplog.set_level("INFO", logger="lens_ros.whisper")
    whisper = BackgroundWhisper(str(tiny_whisper_dir), device="cpu")
    whisper.start()
    assert not whisper.ready and not whisper.failed  # start() returned before the model was read from disk
    assert whisper.wait(120) is not None and whisper.ready and not whisper.failed
    audio = _tone(440, 1.0, 16000, amplitude=0.3)
    direct = WhisperTranscriber.from_pretrained(tiny_whisper_dir, device="cpu")
    assert whisper.transcribe(audio, 16000) == direct.transcribe(audio, 16000) != ""
    assert [r.getMessage() for r in _whisper_records(caplog)] == [
        f"Whisper {tiny_whisper_dir} loaded: spoken commands are on"
    ]


def test_a_whisper_not_in_the_cache_offline_is_one_log_line_saying_what_to_download(monkeypatch, caplog):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    caplog.set_level("INFO", logger="lens_ros.whisper")
    whisper = BackgroundWhisper("lens-tests/no-such-whisper", device="cpu")
    whisper.start()
    assert whisper.wait(120) is None and whisper.failed and "no-such-whisper" in whisper.reason
    [record] = _whisper_records(caplog)
    line = record.getMessage()
    assert record.levelname == "ERROR" and "\n" not in line
    assert line.startswith("spoken commands are off: Whisper 'lens-tests/no-such-whisper' is not in the Hugging Face")
    assert "text commands and the service work" in line
    assert "`hf download lens-tests/no-such-whisper`" in line  # what to download
    assert f"copy models--lens-tests--no-such-whisper from its cache into {constants.HF_HUB_CACHE}" in line  # where
    assert whisper.transcribe(_tone(440, 0.5, 16000), 16000) == ""  # nothing to transcribe with, no error
    assert len(_whisper_records(caplog)) == 1


def test_an_unreachable_hub_fails_at_once_instead_of_retrying(monkeypatch, caplog):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    caplog.set_level("INFO", logger="lens_ros.whisper")
    started = time.monotonic()
    whisper = BackgroundWhisper("lens-tests/no-such-whisper", device="cpu")
    assert whisper.wait(120) is None and whisper.failed
    assert time.monotonic() - started < 30
    [record] = _whisper_records(caplog)
    assert "127.0.0.1:9 cannot be reached" in record.getMessage()
    assert "`hf download lens-tests/no-such-whisper`" in record.getMessage()


def test_a_missing_local_whisper_directory_is_named(tmp_path, caplog):
    caplog.set_level("INFO", logger="lens_ros.whisper")
    missing = tmp_path / "whisper-small"
    whisper = BackgroundWhisper(str(missing), device="cpu")
    assert whisper.wait(120) is None and whisper.failed
    [record] = _whisper_records(caplog)
    assert record.getMessage().startswith(f"spoken commands are off: audio_model '{missing}' is not a directory")
    assert f"--local-dir {missing}" in record.getMessage()
