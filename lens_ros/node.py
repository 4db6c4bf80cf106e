"""The lens_ros node (`ros2 run lens_ros lens_node`, `ros2 launch lens_ros segment.launch.py`): thin rclpy glue.

A lifecycle node named `lens`:
    configure   reads the parameters (lens_ros.params), loads LENS (LensPipeline.from_pretrained), starts loading
                Whisper in the background for spoken commands (lens_ros.whisper.BackgroundWhisper: text commands
                and the service never wait for it), and creates the subscriptions, publishers, the /lens/segment
                service and the /lens/segment_action action; a failure is logged and leaves it unconfigured
    activate    starts the worker threads (lens_ros.engine): inputs are used and requests served from now on
    deactivate  stops them (pending requests answer success=false); while inactive the service answers
                success=false "node is inactive ..." and the action rejects goals (lens_ros.lifecycle.ServingGate)
    cleanup     destroys the ROS entities and frees the models
The ROS entities live from configure to cleanup: deactivate destroys nothing while the executor spins, and the spin
loop survives an entity destroyed under it on cleanup (rclpy's InvalidHandle race; lens_ros.lifecycle.spin).
With the `autostart` parameter (default true) it configures and activates itself on startup.

Subscribes (relative names, so a namespace or remapping moves them):
    image       sensor_msgs/Image (sensor-data QoS); sensor_msgs/CompressedImage with image_compressed:=true
    command     std_msgs/String: segment this in the latest (or next) frame
    audio       audio_common_msgs/AudioData (raw PCM, e.g. audio_capture with format:=wave) -> Whisper -> command
    audio_info  audio_common_msgs/AudioInfo: sample rate, channels, sample format of `audio`
    depth       sensor_msgs/Image 16UC1/32FC1 registered to `image` (depth_enabled; QoS depth_qos)
    camera_info sensor_msgs/CameraInfo of the depth image (depth_enabled)
A command may name several objects ("the cup and the spoon", multi_target): each is a target with the id k, all
segmented in one batched call (lens_model.inference.targets).
Publishes:
    mask        sensor_msgs/Image mono8 (255 = any target), header = the source image's
    masks       sensor_msgs/Image mono8 label image (0 = background, k = target k)
    detections  vision_msgs/Detection2DArray (per target: box in pixels, score, its phrase as class_id, id "k")
    reasoning   std_msgs/String (the generated text)
    overlay     sensor_msgs/Image rgb8 for RViz
    result      lens_interfaces/SegmentationResult (all of the above in one message)
    transcript  std_msgs/String (what Whisper heard)
    tracking_state  std_msgs/String JSON: idle / tracking / lost, prompt, frames tracked and dropped (tracking on;
                mask, detections and the 3D outputs then also come for every tracked frame: lens_ros.tracking_worker)
    target_point   geometry_msgs/PointStamped: the object's 3D centroid (depth_enabled; when measured)
    detections_3d  vision_msgs/Detection3DArray: per target centroid, 3D box, score, phrase (depth_enabled)
    markers        visualization_msgs/MarkerArray: per target CUBE, SPHERE, TEXT (depth_enabled; lens_ros.fields)
    target_cloud   sensor_msgs/PointCloud2 x y z rgb of the objects (publish_target_cloud)
    (3D outputs: the source image's stamp, the depth image's frame_id)
    /diagnostics   diagnostic_msgs/DiagnosticArray at 1 Hz in every state (lens_ros.diagnostics)
Serves:
    ~/segment         lens_interfaces/srv/Segment      (/lens/segment)
    ~/segment_action  lens_interfaces/action/Segment   (/lens/segment_action; feedback: the text so far)
    ~/enable          std_srvs/SetBool                 (/lens/enable: pause / resume processing while active)
Parameters prompt, multi_target and max_rate_hz apply at runtime (`prompt` starts that command); a change of any
other is refused with the reason while the node is configured (lens_ros.params.runtime_change_refusal).

All the logic lives in plain-Python modules tested without ROS (engine, policy, conversions, results,
interfaces, whisper, params). Inference runs on the engine's worker thread; subscriptions run in a mutually
exclusive callback group and the service/action in a reentrant one, on a MultiThreadedExecutor, so the node
keeps receiving frames and answering while the model works. No input can kill it: a bad frame, an empty
command, a stale frame or a model error is logged and answered with success=false.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import sys
import time

try:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PointStamped
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
    from rclpy.action import ActionServer, CancelResponse, GoalResponse
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
    from rclpy.lifecycle import Node as LifecycleNode
    from rclpy.lifecycle import State, TransitionCallbackReturn
    from rclpy.publisher import Publisher
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from rclpy.service import Service
    from rclpy.subscription import Subscription
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
    from std_msgs.msg import String
    from std_srvs.srv import SetBool
    from vision_msgs.msg import Detection2DArray, Detection3DArray
    from visualization_msgs.msg import MarkerArray
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"lens_node needs ROS 2 ({exc}): source /opt/ros/<distro>/setup.bash and the workspace's "
        "install/setup.bash first"
    ) from exc
try:
    from lens_interfaces.action import Segment as SegmentAction
    from lens_interfaces.msg import SegmentationResult
    from lens_interfaces.srv import Segment
except ImportError as exc:  # pragma: no cover
    raise ImportError(
        f"lens_node needs the lens_interfaces package ({exc}): build it with "
        "`colcon build --packages-up-to lens_ros` (see docs/ros.md) and source install/setup.bash"
    ) from exc

from .diagnostics import DIAGNOSTICS_PERIOD_S, DiagnosticsReporter, Health
from .engine import NOT_ACTIVE, Outcome, SegmentationEngine, SpokenCommands
from .lifecycle import ServingGate, spin
from .messages import fill_diagnostics
from .params import PARAMETERS, RUNTIME_PARAMETERS, NodeSettings, ParamSpec, runtime_change_refusal
from .tracking_worker import TrackingStatus, load_tracker
from .whisper import BackgroundWhisper

LENS_PARAMETERS = frozenset(spec.name for spec in PARAMETERS)  # the node's own, as opposed to rclpy's (use_sim_time)

try:  # spoken commands are optional: without audio_common_msgs the node runs text-only
    from audio_common_msgs.msg import AudioData, AudioInfo
except ImportError:  # pragma: no cover - depends on the ROS installation
    AudioData = AudioInfo = None

NODE_NAME = "lens"


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """rcl_interfaces ParameterDescriptor: description, choices as a constraint, integer/float range."""
    d = ParameterDescriptor(name=spec.name, description=spec.full_description())
    if spec.choices:
        d.additional_constraints = spec.constraint
    if spec.range is not None:
        if isinstance(spec.default, int) and not isinstance(spec.default, bool):
            d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
        else:
            d.floating_point_range = [
                FloatingPointRange(from_value=float(spec.range[0]), to_value=float(spec.range[1]), step=0.0)
            ]
    return d


class LensNode(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        for spec in PARAMETERS:
            try:
                self.declare_parameter(spec.name, spec.default, descriptor(spec))
            except (InvalidParameterTypeException, InvalidParameterValueException) as exc:  # e.g. `queue_size: 0`
                self.get_logger().error(f"parameter {spec.name}: {exc}; using its default {spec.default!r}")
                self.declare_parameter(spec.name, spec.default, descriptor(spec), ignore_override=True)
        self.settings: NodeSettings | None = None
        self.pipeline = None
        self.whisper: BackgroundWhisper | None = None  # loading or loaded from configure to cleanup
        self.tracker = None  # lens_model.tracking.tracker.StreamingTracker with tracking on, from configure to cleanup
        self.engine: SegmentationEngine | None = None  # while active
        self.spoken: SpokenCommands | None = None  # while active, with spoken commands on
        self.gate = ServingGate(self.get_fully_qualified_name())
        self._inputs = MutuallyExclusiveCallbackGroup()  # cheap callbacks: store a frame, queue a command
        self._requests = ReentrantCallbackGroup()  # service / action callbacks block until their result
        self._entities: list = []  # subscriptions, publishers, the service: from configure to cleanup
        self._action_server: ActionServer | None = None
        self._pubs: dict = {}
        self.model_error = ""  # why the last configure failed to load the model ("" when it loaded)
        # runtime parameters take effect at once; the others are refused while configured (read on configure)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # health on /diagnostics at 1 Hz in every lifecycle state (a model that failed to load is reported too)
        self._diagnostics = DiagnosticsReporter(f"{NODE_NAME}: {self.get_fully_qualified_name()}")
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", QoSProfile(depth=10))
        reports = MutuallyExclusiveCallbackGroup()
        self.create_timer(DIAGNOSTICS_PERIOD_S, self.publish_diagnostics, callback_group=reports)

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # -- lifecycle --
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        log = self.get_logger()
        try:
            self.settings = NodeSettings.from_values({p.name: self.get_parameter(p.name).value for p in PARAMETERS})
            from lens_model.inference.pipeline import LensPipeline

            s = self.settings
            log.info(f"loading {s.model} (device {s.device}, dtype {s.dtype}, backend {s.backend})")
            self.pipeline = LensPipeline.from_pretrained(s.model, **s.pipeline_kwargs())
            self.tracker = load_tracker(self.pipeline, s, log)
            self.whisper = None
            if s.audio_enabled and AudioData is None:
                log.warning(
                    "audio_enabled but audio_common_msgs is not installed: spoken commands are off "
                    "(apt install ros-$ROS_DISTRO-audio-common-msgs)"
                )
            elif s.audio_enabled:
                log.info(f"loading Whisper {s.audio_model} in the background; text commands do not wait for it")
                self.whisper = BackgroundWhisper(
                    s.audio_model, device=s.audio_device or s.device, language=s.audio_language or None, log=log
                )
                self.whisper.start()
            self._create_io()
        except Exception as exc:  # noqa: BLE001 - a failed configure leaves the node alive and unconfigured
            log.error(f"configure failed: {exc}")
            self.model_error = str(exc) if self.pipeline is None else ""
            self._destroy_io()
            self._free_models()
            return TransitionCallbackReturn.FAILURE
        self.model_error = ""
        self.gate.set_state("inactive")
        log.info("configured")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        # runtime parameters set while inactive count from now on
        runtime = {name: self.get_parameter(name).value for name in RUNTIME_PARAMETERS}
        self.settings = s = dataclasses.replace(self.settings, **runtime)
        log = self.get_logger()
        try:
            self.engine = SegmentationEngine(
                self.pipeline,
                s,
                publish=self._publish,
                log=log,
                clock=self.now_s,
                tracker=self.tracker,
                publish_state=self._publish_tracking_state,
            )
            if self.whisper is not None and not self.whisper.failed:
                self.spoken = SpokenCommands(self.whisper, s, self._on_transcript, log=log)
                self.spoken.start()
            self.engine.start()
            if s.prompt.strip():
                self.engine.set_prompt(s.prompt)
        except Exception as exc:  # noqa: BLE001
            log.error(f"activate failed: {exc}")
            self._stop_work()
            return TransitionCallbackReturn.FAILURE
        self.gate.set_state("active")
        log.info(
            f"active: service {self.resolve_service_name('~/segment')}, image topic "
            f"{self.resolve_topic_name(s.image_topic)}"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self.gate.set_state("inactive")
        self._stop_work()
        self.get_logger().info("inactive: the service answers success=false and the action rejects goals")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self.gate.set_state("unconfigured")
        self._stop_work()
        self._destroy_io()
        self._free_models()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self.stop_io()
        self._free_models()
        self.gate.set_state("finalized")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in state {state.label}; stopping I/O")
        self.stop_io()
        self._free_models()
        return TransitionCallbackReturn.SUCCESS  # back to unconfigured, still alive

    # -- I/O: created on configure, destroyed on cleanup --
    def _create_io(self) -> None:
        s = self.settings
        reliable = QoSProfile(depth=10)
        self._pubs = {
            "mask": self.create_publisher(Image, s.mask_topic, reliable),
            "masks": self.create_publisher(Image, s.masks_topic, reliable),
            "detections": self.create_publisher(Detection2DArray, s.detections_topic, reliable),
            "reasoning": self.create_publisher(String, s.reasoning_topic, reliable),
            "result": self.create_publisher(SegmentationResult, s.result_topic, reliable),
            "transcript": self.create_publisher(String, s.transcript_topic, reliable),
        }
        if s.publish_overlay:
            self._pubs["overlay"] = self.create_publisher(Image, s.overlay_topic, reliable)
        if s.depth_enabled:
            self._pubs["target_point"] = self.create_publisher(PointStamped, s.target_point_topic, reliable)
            self._pubs["detections_3d"] = self.create_publisher(Detection3DArray, s.detections_3d_topic, reliable)
            self._pubs["markers"] = self.create_publisher(MarkerArray, s.markers_topic, reliable)
            if s.publish_target_cloud:
                self._pubs["target_cloud"] = self.create_publisher(PointCloud2, s.target_cloud_topic, reliable)
        if self.tracker is not None:
            self._pubs["tracking_state"] = self.create_publisher(String, s.tracking_state_topic, reliable)
        self._entities = list(self._pubs.values())
        image_type = CompressedImage if s.image_compressed else Image
        self._entities.append(
            self.create_subscription(
                image_type, s.image_topic, self._on_image, qos_profile_sensor_data, callback_group=self._inputs
            )
        )
        self._entities.append(
            self.create_subscription(String, s.command_topic, self._on_command, reliable, callback_group=self._inputs)
        )
        if s.depth_enabled:
            depth_qos = qos_profile_sensor_data if s.depth_qos == "sensor_data" else reliable
            self._entities.append(
                self.create_subscription(Image, s.depth_topic, self._on_depth, depth_qos, callback_group=self._inputs)
            )
            self._entities.append(
                self.create_subscription(
                    CameraInfo, s.camera_info_topic, self._on_camera_info, depth_qos, callback_group=self._inputs
                )
            )
        if self.whisper is not None:
            audio_qos = QoSProfile(depth=200, reliability=qos_profile_sensor_data.reliability)
            self._entities.append(
                self.create_subscription(
                    AudioData, s.audio_topic, self._on_audio, audio_qos, callback_group=self._inputs
                )
            )
            self._entities.append(
                self.create_subscription(
                    AudioInfo, s.audio_info_topic, self._on_audio_info, reliable, callback_group=self._inputs
                )
            )
        self._entities.append(
            self.create_service(Segment, "~/segment", self._on_segment, callback_group=self._requests)
        )
        self._entities.append(self.create_service(SetBool, "~/enable", self._on_enable, callback_group=self._inputs))
        self._action_server = ActionServer(
            self,
            SegmentAction,
            "~/segment_action",
            self._execute_goal,
            callback_group=self._requests,
            goal_callback=self._on_goal,
            cancel_callback=lambda handle: CancelResponse.REJECT,
        )

    def stop_io(self) -> None:
        """Stop the worker threads and destroy the ROS entities (shutdown, error, and the end of main)."""
        self.gate.set_state("unconfigured")
        self._stop_work()
        self._destroy_io()

    def _stop_work(self) -> None:
        """Stop spoken commands and the engine's worker; pending and running requests are answered."""
        if self.spoken is not None:
            self.spoken.stop()
            self.spoken = None
        if self.engine is not None:
            self.engine.stop()
            self.engine = None

    def _destroy_io(self) -> None:
        # the service/action callbacks still running were answered by _stop_work: let them return first
        if not self.gate.wait_idle(timeout=10.0):
            self.get_logger().warning(f"{self.gate.in_flight} request callback(s) still running on cleanup")
        if self._action_server is not None:
            try:
                self._action_server.destroy()
            except Exception as exc:  # noqa: BLE001
                self.get_logger().warning(f"could not destroy the action server: {exc}")
            self._action_server = None
        for entity in self._entities:  # through the node, which also forgets them (the executor's wait set)
            try:
                if isinstance(entity, Publisher):
                    self.destroy_publisher(entity)
                elif isinstance(entity, Subscription):
                    self.destroy_subscription(entity)
                elif isinstance(entity, Service):
                    self.destroy_service(entity)
            except Exception as exc:  # noqa: BLE001
                self.get_logger().warning(f"could not destroy {entity}: {exc}")
        self._entities, self._pubs = [], {}

    def _free_models(self) -> None:
        self.pipeline = self.whisper = self.tracker = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    # -- callbacks: cheap, never raise; inputs are dropped while inactive (no engine) --
    def _on_image(self, msg) -> None:
        engine = self.engine
        if engine is not None:
            engine.on_image(msg)

    def _on_depth(self, msg) -> None:
        engine = self.engine
        if engine is not None:
            engine.on_depth(msg)

    def _on_camera_info(self, msg) -> None:
        engine = self.engine
        if engine is not None:
            engine.on_camera_info(msg)

    def _on_command(self, msg: String) -> None:
        engine = self.engine
        if engine is not None:
            engine.submit(msg.data, source="command")
        else:
            self.get_logger().warning(
                f"command {msg.data!r} ignored: {self.gate.refusal() or NOT_ACTIVE}", throttle_duration_sec=5.0
            )

    def _on_audio(self, msg) -> None:
        spoken = self.spoken
        if spoken is not None:
            spoken.feed(bytes(msg.data))

    def _on_audio_info(self, msg) -> None:
        spoken = self.spoken
        if spoken is not None:
            spoken.set_format(msg.sample_rate, msg.channels, msg.sample_format)

    def _on_transcript(self, text: str) -> None:
        pub = self._pubs.get("transcript")
        if pub is not None:
            pub.publish(String(data=text))
        engine = self.engine
        if engine is not None:
            engine.submit(text, source="audio")

    def _publish(self, outcome: Outcome) -> None:  # the worker thread (each result) or the tracking thread
        m = outcome.messages
        pubs = self._pubs
        pubs["mask"].publish(m.mask)
        pubs["masks"].publish(m.labels)
        pubs["detections"].publish(m.detections)
        tracked = outcome.source == "tracking"  # a tracked frame: no text, overlay or result message
        if not tracked:
            pubs["reasoning"].publish(m.reasoning)
        if m.overlay is not None and "overlay" in pubs:
            pubs["overlay"].publish(m.overlay)
        target = m.target
        if target is not None:
            pubs["detections_3d"].publish(target.detections)
            if target.point is not None:
                pubs["target_point"].publish(target.point)
            if target.cloud is not None and "target_cloud" in pubs:
                pubs["target_cloud"].publish(target.cloud)
            if target.markers is not None:
                pubs["markers"].publish(target.markers)
        if not tracked:
            pubs["result"].publish(outcome.result_msg)

    def _publish_tracking_state(self, status: TrackingStatus) -> None:  # the tracking thread
        pub = self._pubs.get("tracking_state")
        if pub is not None:
            pub.publish(String(data=status.to_json()))

    # -- runtime control and health --
    def _on_enable(self, request, response):
        """~/enable (std_srvs/SetBool): pause or resume processing without a lifecycle transition."""
        engine = self.engine
        if engine is None:
            response.success, response.message = False, self.gate.refusal() or NOT_ACTIVE
            self.get_logger().warning(f"~/enable {request.data}: {response.message}")
        else:
            response.success, response.message = True, engine.set_enabled(request.data)
        return response

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        """Accept a change of a runtime parameter (applied at once) or of any parameter while unconfigured; refuse
        the others with the reason (`ros2 param set` prints it)."""
        configured = self.gate.state in ("inactive", "active")
        for parameter in parameters:
            if parameter.name not in LENS_PARAMETERS:
                continue  # rclpy's own (use_sim_time, ...): not lens's to refuse
            refusal = runtime_change_refusal(parameter.name, parameter.value, configured)
            if refusal is not None:
                self.get_logger().warning(f"parameter change refused: {refusal}")
                return SetParametersResult(successful=False, reason=refusal)
        runtime = {p.name: p.value for p in parameters if p.name in RUNTIME_PARAMETERS}
        engine = self.engine
        if runtime and self.settings is not None:
            self.settings = dataclasses.replace(self.settings, **runtime)
        if runtime and engine is not None:
            engine.update_settings(**{k: v for k, v in runtime.items() if k != "prompt"})
            if "prompt" in runtime:
                engine.set_prompt(runtime["prompt"])
        for name, value in runtime.items():
            self.get_logger().info(f"parameter {name} set to {value!r}")
        return SetParametersResult(successful=True)

    def health(self) -> Health:
        """What /diagnostics reports now (lens_ros.diagnostics)."""
        s = self.settings
        model = s.model if s is not None else self.get_parameter("model").value
        device = str(self.pipeline.model.device) if self.pipeline is not None else self.get_parameter("device").value
        whisper = self.whisper
        if whisper is None:
            whisper_state = "off"
        elif whisper.failed:
            whisper_state = f"failed: {whisper.reason}"
        else:
            whisper_state = "ready" if whisper.ready else "loading"
        node = dict(model=model, device=device, lifecycle=self.gate.state, model_error=self.model_error)
        engine = self.engine
        if engine is None:
            return Health(whisper=whisper_state, **node)
        return engine.health(whisper=whisper_state, **node)

    def publish_diagnostics(self) -> None:
        try:
            status = self._diagnostics.report(self.health(), time.monotonic())
            self._diagnostics_pub.publish(fill_diagnostics([status], self.get_clock().now().to_msg()))
        except Exception as exc:  # noqa: BLE001 - a report must never take the node down
            self.get_logger().error(f"diagnostics: {exc!r}", throttle_duration_sec=10.0)

    def _wait(self, prompt: str, image, source: str, feedback=None) -> Outcome:
        engine = self.engine
        if engine is None:
            return Outcome(False, self.gate.refusal() or NOT_ACTIVE, prompt, source)
        return engine.submit(prompt, image=image, feedback=feedback, source=source).wait(
            self.settings.service_timeout_s
        )

    def _on_segment(self, request, response):
        with self.gate.request() as refusal:
            try:
                if refusal is not None:
                    outcome = Outcome(False, refusal, request.prompt, "service")
                else:
                    outcome = self._wait(request.prompt, request.image if request.has_image else None, "service")
            except Exception as exc:  # noqa: BLE001 - the caller always gets an answer
                outcome = Outcome(False, f"internal error: {exc!r}")
            response.success, response.message = bool(outcome.success), str(outcome.message)
            if outcome.result_msg is not None:
                response.result = outcome.result_msg
            return response

    def _on_goal(self, goal) -> GoalResponse:
        refusal = self.gate.refusal()
        if refusal is not None:
            self.get_logger().warning(f"Segment goal {goal.prompt!r} rejected: {refusal}")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _execute_goal(self, goal_handle):
        goal = goal_handle.request

        def feedback(text: str, num_tokens: int) -> None:
            goal_handle.publish_feedback(SegmentAction.Feedback(reasoning=text, num_tokens=int(num_tokens)))

        with self.gate.request() as refusal:
            try:
                if refusal is not None:  # accepted, then deactivated before it ran
                    outcome = Outcome(False, refusal, goal.prompt, "action")
                else:
                    outcome = self._wait(goal.prompt, goal.image if goal.has_image else None, "action", feedback)
            except Exception as exc:  # noqa: BLE001
                outcome = Outcome(False, f"internal error: {exc!r}")
            result = SegmentAction.Result(success=bool(outcome.success), message=str(outcome.message))
            if outcome.result_msg is not None:
                result.result = outcome.result_msg
            try:
                if outcome.success:
                    goal_handle.succeed()
                else:
                    goal_handle.abort()
            except Exception as exc:  # noqa: BLE001 - the action server went away (cleanup) under this goal
                self.get_logger().warning(f"Segment goal {goal.prompt!r}: could not report its end: {exc}")
            return result


def main(args=None) -> None:
    rclpy.init(args=args)
    node = LensNode()
    executor = MultiThreadedExecutor(num_threads=max(4, os.cpu_count() or 1))
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
            else:
                node.get_logger().error(
                    "not configured: fix the parameters, then "
                    f"`ros2 lifecycle set {node.get_fully_qualified_name()} configure`"
                )
        spin(executor, node.get_logger(), stop_on=(ExternalShutdownException,))
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.stop_io()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    exit_now()


def exit_now() -> None:
    """End a cleanly stopped node at once: the interpreter's own teardown of torch, transformers and sam2 (freeing
    thousands of modules and objects) takes 1-2 s that a stopping node does not need, and `ros2 launch` waits for it
    after Ctrl-C. Python's and C's output buffers are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    ctypes.CDLL(None).fflush(None)  # rcutils logs through C stdio
    os._exit(0)


if __name__ == "__main__":
    main()
