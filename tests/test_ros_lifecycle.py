"""The node's lifecycle without ROS: lens_ros.lifecycle's ServingGate (what the service and action answer in each
state, the calls in flight that cleanup waits for), its spin loop surviving the exceptions rclpy raises when an
entity is destroyed under the executor, and the node's structure (read with `ast`): the ROS entities live from
configure to cleanup, so deactivate destroys nothing."""

import ast
import threading
import time

import pytest
from conftest import REPO

from lens_ros.lifecycle import ServingGate, SpinGuard, spin

NODE = REPO / "lens_ros" / "node.py"


# --- ServingGate ---


def test_gate_refuses_until_active_and_again_after_deactivate():
    gate = ServingGate("/robot1/lens")
    refusal = gate.refusal()
    assert (
        refusal.startswith("node is inactive (unconfigured)") and "ros2 lifecycle set /robot1/lens configure" in refusal
    )
    gate.set_state("inactive")  # configured
    assert gate.refusal() == "node is inactive: activate it with `ros2 lifecycle set /robot1/lens activate`"
    gate.set_state("active")
    assert gate.active and gate.refusal() is None
    with gate.request() as refusal:
        assert refusal is None
    gate.set_state("inactive")  # deactivated
    with gate.request() as refusal:
        assert refusal.startswith("node is inactive:")
    with pytest.raises(ValueError, match="lifecycle state must be one of"):
        gate.set_state("paused")


def test_gate_counts_calls_in_flight_and_cleanup_waits_for_them():
    gate = ServingGate()
    gate.set_state("active")
    inside, leave = threading.Event(), threading.Event()

    def call():
        with gate.request():
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=call)
    thread.start()
    assert inside.wait(10) and gate.in_flight == 1
    started = time.monotonic()
    assert not gate.wait_idle(timeout=0.2)  # the call is still running
    assert time.monotonic() - started >= 0.2
    threading.Timer(0.2, leave.set).start()
    assert gate.wait_idle(timeout=10) and gate.in_flight == 0
    thread.join(10)


def test_a_call_that_raises_still_leaves_the_gate():
    gate = ServingGate()
    with pytest.raises(RuntimeError), gate.request():
        raise RuntimeError("callback failed")
    assert gate.in_flight == 0 and gate.wait_idle(timeout=0)


# --- the spin loop ---


class InvalidHandle(Exception):
    """What rclpy raises (rclpy.exceptions.InvalidHandle) when the executor meets an entity being destroyed."""


class Executor:
    """A stand-in for rclpy's executor: `spin()` raises the given exceptions one after the other, then returns."""

    def __init__(self, *raises):
        self.raises = list(raises)
        self.spins = 0

    def spin(self):
        self.spins += 1
        if self.raises:
            raise self.raises.pop(0)


class Log(list):
    def warning(self, text):
        self.append(("warning", text))

    def error(self, text):
        self.append(("error", text))


def test_spin_survives_invalid_handle_and_returns_on_shutdown():
    executor, log = Executor(InvalidHandle("cannot use Destroyable because destruction was requested")), Log()
    assert spin(executor, log) == 1
    assert executor.spins == 2  # spun again after the exception, then returned (shutdown)
    assert log == [
        ("warning", "executor: InvalidHandle: cannot use Destroyable because destruction was requested; spinning on")
    ]


def test_spin_ends_quietly_on_the_shutdown_exception():
    class ExternalShutdown(Exception):
        pass

    executor, log = Executor(ExternalShutdown()), Log()
    assert spin(executor, log, stop_on=(ExternalShutdown,)) == 0 and executor.spins == 1 and log == []


def test_spin_gives_up_when_errors_repeat_too_fast():
    executor, log = Executor(*[InvalidHandle(str(i)) for i in range(10)]), Log()
    with pytest.raises(InvalidHandle, match="^3$"):
        spin(executor, log, guard=SpinGuard(max_errors=3, window_s=60))
    assert [kind for kind, _ in log] == ["warning"] * 3 + ["error"]


def test_spin_counts_one_exception_raised_again_once():
    """rclpy's MultiThreadedExecutor may queue one failed callback's task several times and re-raise its exception
    once per entry: the same object 50 times is one error (logged once), not 50 that end the node."""
    same = InvalidHandle("action server pointer is invalid")
    executor, log = Executor(*[same] * 50, InvalidHandle("another"), *[same] * 5), Log()
    assert spin(executor, log, guard=SpinGuard(max_errors=3, window_s=60)) == 2
    assert executor.spins == 57 and [text for _, text in log] == [
        "executor: InvalidHandle: action server pointer is invalid; spinning on",
        "executor: InvalidHandle: another; spinning on",
    ]


def test_spin_guard_forgets_errors_older_than_its_window():
    now = [0.0]
    guard = SpinGuard(max_errors=2, window_s=10, clock=lambda: now[0])
    assert guard.keep_spinning() and guard.keep_spinning()
    now[0] = 5.0
    assert not guard.keep_spinning()  # three within 10 s
    now[0] = 16.0  # the ones at 0 s and 5 s have aged out
    assert guard.keep_spinning() and guard.total == 4
    with pytest.raises(ValueError, match="max_errors >= 1"):
        SpinGuard(max_errors=0)


# --- the node's structure: which transition creates and destroys what ---


def _methods() -> dict[str, ast.FunctionDef]:
    tree = ast.parse(NODE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LensNode")
    return {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}


def _reached_calls(start: str) -> set[str]:
    """Names of every method called from `start`, through the node's own methods (self.x(...)) transitively."""
    methods, seen, todo, calls = _methods(), set(), [start], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in methods:
            continue
        seen.add(name)
        for node in ast.walk(methods[name]):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                calls.add(node.func.id)  # a class, e.g. ActionServer(...)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                calls.add(node.func.attr)
                if ast.unparse(node.func.value) == "self":
                    todo.append(node.func.attr)
    return calls


def test_deactivate_and_activate_create_and_destroy_no_ros_entity():
    for transition in ("on_activate", "on_deactivate"):
        calls = _reached_calls(transition)
        touched = {c for c in calls if c.startswith(("create_", "destroy")) or c == "ActionServer"}
        assert not touched, f"{transition} creates or destroys {touched} while the executor spins"
        assert "set_state" in calls  # it moves the gate instead


def test_configure_creates_and_cleanup_destroys_the_entities():
    configure, cleanup = _reached_calls("on_configure"), _reached_calls("on_cleanup")
    assert {"create_publisher", "create_subscription", "create_service", "ActionServer"} <= configure
    assert {"destroy_publisher", "destroy_subscription", "destroy_service", "destroy", "wait_idle"} <= cleanup


def test_the_service_and_the_action_ask_the_gate():
    methods = _methods()
    for name in ("_on_segment", "_execute_goal"):
        assert "self.gate.request()" in ast.unparse(methods[name]), name
    assert "self.gate.refusal()" in ast.unparse(methods["_on_goal"])
    assert "GoalResponse.REJECT" in ast.unparse(methods["_on_goal"])
