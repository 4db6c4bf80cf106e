"""Command queueing/dropping, frame choice and staleness, with fake clocks (no sleeping)."""

import logging
import threading

import pytest

from lens_ros.policy import Command, CommandQueue, FrameBuffer


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def texts(commands):
    return [c.text for c in commands]


def test_queue_policy_is_a_bounded_fifo_that_drops_the_oldest(caplog):
    clock = FakeClock(100.0)
    q = CommandQueue("queue", size=2, clock=clock)
    a = q.submit("the red cup")
    clock.now = 101.0
    b = q.submit("  the blue bowl  ")
    assert a.accepted and b.accepted and a.dropped == b.dropped == ()
    assert (a.command.stamp, b.command.stamp) == (100.0, 101.0)
    assert b.command.text == "the blue bowl" and (a.command.id, b.command.id) == (1, 2)
    with caplog.at_level(logging.WARNING, logger="lens_ros.policy"):
        c = q.submit("the spoon", stamp=102.5)
    assert c.accepted and c.command.stamp == 102.5
    assert texts(c.dropped) == ["the red cup"]
    assert "queue full (size 2)" in c.reason and "'the red cup'" in c.reason
    assert "dropped the oldest pending command 'the red cup'" in caplog.text
    assert texts(q.pending) == ["the blue bowl", "the spoon"]
    assert q.get(timeout=0).text == "the blue bowl" and q.busy
    # while busy, "queue" keeps accepting
    assert q.submit("the fork").accepted
    q.task_done()
    assert not q.busy
    assert texts([q.get(timeout=0), q.get(timeout=0)]) == ["the spoon", "the fork"]
    q.task_done()
    assert q.get(timeout=0) is None and not q.busy


def test_drop_policy_drops_while_busy_or_pending(caplog):
    q = CommandQueue("drop", clock=FakeClock(5.0))
    first = q.submit("the mug")
    assert first.accepted
    pending = q.submit("the plate")  # the worker has not taken "the mug" yet: that counts as busy
    assert not pending.accepted and texts(pending.dropped) == ["the plate"] and pending.command.text == "the plate"
    assert q.get(timeout=0).text == "the mug" and q.busy
    with caplog.at_level(logging.WARNING, logger="lens_ros.policy"):
        busy = q.submit("the knife")
    assert not busy.accepted and texts(busy.dropped) == ["the knife"]
    assert busy.reason == "dropped command 'the knife': busy with 'the mug' (policy drop)"
    assert busy.reason in caplog.text
    q.task_done()
    after = q.submit("the knife")
    assert after.accepted and after.dropped == () and q.get(timeout=0).text == "the knife"


@pytest.mark.parametrize("text", ["", "   ", "\n\t", None, 42])
def test_empty_or_non_text_commands_are_refused(text):
    q = CommandQueue()
    result = q.submit(text)
    assert not result.accepted and result.command is None and result.dropped == ()
    assert result.reason.startswith("command refused")
    assert q.pending == () and q.get(timeout=0) is None


def test_invalid_parameters():
    with pytest.raises(ValueError, match="queue policy must be one of queue, drop, got 'fifo'"):
        CommandQueue("fifo")
    with pytest.raises(ValueError, match="queue size must be >= 1, got 0"):
        CommandQueue("queue", size=0)
    with pytest.raises(ValueError, match="frame mode must be one of latest, next"):
        FrameBuffer("newest")
    with pytest.raises(ValueError, match="max_frame_age_s must be > 0"):
        FrameBuffer(max_frame_age_s=0)
    with pytest.raises(ValueError, match="history must be >= 1"):
        FrameBuffer(history=0)


def test_close_wakes_a_waiting_worker_and_refuses_later_commands():
    q = CommandQueue("queue", size=4)
    got = []
    worker = threading.Thread(target=lambda: got.append(q.get()))  # blocks: nothing pending
    worker.start()
    q.submit("a")
    worker.join(timeout=10)
    assert texts(got) == ["a"]
    q.task_done()
    q.submit("b")
    assert texts(q.close()) == ["b"]
    waiter = threading.Thread(target=lambda: got.append(q.get()))
    waiter.start()
    waiter.join(timeout=10)
    assert not waiter.is_alive() and got[-1] is None
    refused = q.submit("c")
    assert not refused.accepted and "shutting down" in refused.reason and q.closed


def test_concurrent_submissions_keep_every_command_once():
    q = CommandQueue("queue", size=10_000, clock=FakeClock())
    threads = [threading.Thread(target=lambda n=n: [q.submit(f"cmd {n}-{i}") for i in range(200)]) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    taken = []
    while (c := q.get(timeout=0)) is not None:
        taken.append(c)
        q.task_done()
    assert len(taken) == 1600 and len({c.id for c in taken}) == 1600 and len({c.text for c in taken}) == 1600
    assert [c.id for c in taken] == sorted(c.id for c in taken)  # FIFO


def test_commands_carry_a_payload():
    q = CommandQueue()
    request = object()
    q.submit("the cup", payload=request)
    command = q.get(timeout=0)
    assert isinstance(command, Command) and command.payload is request


def test_latest_mode_and_staleness():
    frames = FrameBuffer("latest", max_frame_age_s=1.0, clock=FakeClock())
    refused = frames.select(10.0)
    assert refused.status == "refused" and refused.reason == "no image has been received yet" and not refused.ok
    frames.put("frame@9.0", 9.0)
    frames.put("frame@10.0", 10.0)
    choice = frames.select(10.5)
    assert choice.ok and choice.frame.message == "frame@10.0" and choice.frame.seq == 2
    assert frames.select(11.0).ok  # exactly max_frame_age_s old is still fresh
    stale = frames.select(11.75)
    assert stale.status == "refused" and stale.frame is None
    assert stale.reason == "latest image is 1.750 s older than the command (max_frame_age_s=1)"
    assert frames.select(9.5).frame.message == "frame@10.0"  # a frame newer than the command is fine
    unbounded = FrameBuffer("latest", max_frame_age_s=None)
    unbounded.put("old", 0.0)
    assert unbounded.select(1e9).ok
    assert frames.latest().message == "frame@10.0"


def test_next_mode_waits_for_the_first_frame_after_the_command():
    clock = FakeClock(20.0)
    frames = FrameBuffer("next", max_frame_age_s=0.5, clock=clock)
    frames.put("before", 19.9)
    waiting = frames.select(20.0)
    assert waiting.status == "wait" and waiting.frame is None
    clock.now = 20.3
    assert frames.select(20.0).status == "wait"
    frames.put("first after", 20.1)
    frames.put("second after", 20.2)
    choice = frames.select(20.0)
    assert choice.ok and choice.frame.message == "first after"
    assert frames.select(20.15).frame.message == "second after"
    assert frames.select(20.1).frame.message == "first after"  # a frame stamped at the command counts
    clock.now = 30.0
    assert frames.select(20.0).frame.message == "first after"  # a frame after the command is never stale
    late = frames.select(29.0)
    assert late.status == "refused"
    assert late.reason == "no image arrived within max_frame_age_s=0.5 s after the command (1.000 s passed)"


def test_next_mode_keeps_only_the_history():
    frames = FrameBuffer("next", history=2, clock=FakeClock(0.0))
    for t in (1.0, 2.0, 3.0):
        frames.put(f"f{t:g}", t)
    assert frames.select(0.5).frame.message == "f2"  # f1 has left the history; the earliest retained one wins


def test_wait_for_frame_blocks_until_a_frame_arrives():
    clock = FakeClock(50.0)
    frames = FrameBuffer("next", max_frame_age_s=5.0, clock=clock)
    assert frames.wait_for_frame(50.0, timeout=0).status == "wait"
    result = []
    waiter = threading.Thread(target=lambda: result.append(frames.wait_for_frame(50.0, timeout=30)))
    waiter.start()
    frames.put("arrived", 50.2)
    waiter.join(timeout=30)
    assert not waiter.is_alive() and result[0].ok and result[0].frame.message == "arrived"
    clock.now = 60.0
    assert frames.wait_for_frame(55.0, timeout=30).status == "refused"  # the age bound has passed: no wait
    latest = FrameBuffer("latest", clock=clock)
    assert latest.wait_for_frame(60.0, timeout=30).reason == "no image has been received yet"  # never waits
