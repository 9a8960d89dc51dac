"""A privileged scripted expert for LIBERO: a teacher with the policy contract and a demonstrator.

The controller reads `info["privileged_state"]` (see `trl_vla.envs.libero_state`) and never images. It is memoryless:
every query re-derives the phase from the state, so it corrects from any state a student reaches. The state names
the *current subgoal* of the task's goal (the first predicate that does not hold, read from the simulator), so a
two-step task (two objects into the basket, a bowl into the drawer and close it) is a sequence of the skills below,
and progress is never remembered.

* `On` / `In`, **not grasped**: choose a grasp (across the object's narrow horizontal side; on the rim for bowls and
  mugs; on a narrow part such as a moka pot's handle for a wide, closed object), fly above it at a height that clears
  the obstacles on the way, open the gripper, turn the fingers, descend through a funnel (the allowed height shrinks
  with the horizontal error), close;
* `On` / `In`, **grasped** (both fingers touch the object): lift above the obstacles between the object and the
  target, move the object over the target (a free spot of it when other objects of the goal go there too; inside a
  region under an overhang, such as a drawer half under its cabinet, the spot least under it, with the grasp chosen
  so that the hand fits there too), lower it onto (or into) the target, open;
* `Turnon` (a stove knob): grip the knob's ridge over its axis and turn the hand;
* `In` under a roof too low for a hand holding the object from above (the mug into the microwave): set the object
  down in front of the region's open face, take it by its handle with the hand level, closing across the handle,
  and carry it in, handle last (`_side_insert`);
* `Close` (a drawer, a door): let go of what the last subgoal moved, come down in front of the handle with the
  closed fingers leaning into the push (a drawer) or straight down (a door: over the door when it stands in the way,
  and in front of its face nearer the hinge when its handle is too near the robot's base), push; a hand that has
  just carried an object in by its handle first pushes it out of the door's way;
* `Open` (a drawer): turn the hand level, pointing at the drawer, close on the handle, pull;
* `Clear` (an object where the drawer an `In` opens will hang): carry it out of that footprint onto the table;
* **success**: open and move up.

Actions are LIBERO's (robosuite OSC pose, delta mode): position deltas in `[-1, 1]` (x 0.05 m per control step),
axis-angle rotation deltas in the world frame in `[-1, 1]` (x 0.5 rad), gripper -1 open / +1 close.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ..action_tokenizer import (
    ActionSpace,
    ActionTokenizer,
    action_bounds,
    identity_norm_stats,
    normalize_actions,
    select_norm_stats,
    unnormalize_actions,
)
from ..envs.libero_state import (
    LIBERO_SUITES,
    OBSTACLE_FIXTURE,
    OBSTACLE_OBJECT,
    OBSTACLE_PICK,
    OBSTACLE_PLACE,
    SUBGOAL_CLEAR,
    SUBGOAL_CLOSE,
    SUBGOAL_IN,
    SUBGOAL_OPEN,
    SUBGOAL_TURN_ON,
    obbs_of_bounds,
)
from ..policy import Generators, sample_from_logits


__all__ = [
    "ExpertQuery",
    "ScriptedLiberoExpert",
    "closed_loop_actions",
    "expert_action",
    "plan_actions",
    "supported_tasks",
]

SUPPORTED_TASKS: dict[str, tuple[int, ...]] = {
    "libero_object": tuple(range(10)),
    "libero_spatial": tuple(range(10)),
    "libero_goal": tuple(range(10)),
    "libero_10": tuple(range(10)),
}
"""Tasks on which the expert succeeds from at least 70% of LIBERO's 50 init states (measured with
`benchmarks/expert_success.py`; every task's rate is in `docs/scripted_expert.md`)."""

# Controller scales (robosuite `controllers/config/osc_pose.json`): an action of 1 asks for this much per step.
POS_SCALE = 0.05
ROT_SCALE = 0.5
OPEN, CLOSE = -1.0, 1.0

# Panda gripper geometry in the grip-site frame (u: closing axis, v: across it, z: up), measured from the MuJoCo
# collision meshes with the gripper open.
FINGER_OPEN_WIDTH = 0.077  # `gripper_opening` when fully open
FINGER_BOX = (0.052, 0.0133, 0.0105, -0.009, 0.045)  # u offset of each finger, half u, half v, z low, z high
HAND_BOX = (0.0, 0.102, 0.032, 0.031, 0.123)
_GRIPPER_PARTS = np.array([(-FINGER_BOX[0], *FINGER_BOX[1:]), FINGER_BOX, HAND_BOX])  # the open gripper's boxes
FINGERTIP_BELOW = 0.009  # the finger collision meshes reach this far below the grip site

# Behaviour.
POS_GAIN = 1.6  # action = gain * error / POS_SCALE
ROT_GAIN = 1.5
FUNNEL_SLOPE = 3.0  # allowed height above a goal per metre of horizontal error
XY_TOL = 0.008
CLEARANCE = 0.04  # vertical margin over obstacles while flying
PRE_GRASP = 0.08
NEAR_GRASP = 0.05  # horizontal distance to the grasp within which the hand holds its height instead of climbing
GRASP_CENTRED = 0.02  # horizontal error below which the open fingers clear the object on the way down
GRASP_XY_TOL = 0.012  # the hand closes when this close to the grasp site horizontally ...
GRASP_Z_TOL = 0.012  # ... and vertically
MAX_LIFT = 0.3  # never carry an object more than this above its goal height
RIM_CANDIDATES = 24
PLACE_RISE = 0.05  # the hand setting an object down comes from this far above where it lets go
INSIDE_MARGIN = 0.006  # an object put into a region stays this far inside its walls (it is let go within 1.6 cm)
FREE_SPOT_INSET = 0.025  # how far inside a region's edge `_free_spot` keeps the object's origin
HOME = np.array([-0.2, 0.0, 1.17])  # the grip site in LIBERO's start pose
ROBOT_BASE_XY = np.array([-0.66, 0.0])  # where the robot's base stands in LIBERO's scenes
COMFORT_REACH = (0.55, 0.76)  # horizontal distances from the base at which the hand grasps at the table's height
CLEAR_GAPS = (0.015, 0.04, 0.065)  # how far outside the box it must leave a `Clear` may set the object down
TILTED = np.radians(20.0)  # a hand pointing further than this from straight down turns before it flies to a grasp
CLOSED_ON_NOTHING = 0.006  # below this opening the closed fingers hold nothing
LET_GO_OPENING = 0.04  # below this opening, away from the grasp, the hand opens before it moves
PART_MAX_WIDTH = 0.03  # the widest part (a handle) `_part_grasp` grasps on its own
PULL_STANDOFF = 0.12  # the open hand lines up with a drawer's handle this far in front of it
PULL_GRIP_DEPTH = 0.012  # how far behind the handle's front the fingers close
PULL_FINGER_GAP = 0.02  # the fingers come in on a handle this much wider than it
PULL_LANE = 0.015  # lateral and vertical tolerance of the hand coming in on a handle
PUSH_STANDOFF = 0.04  # the closed fingers come down this far in front of the face they push
PUSH_TILT = np.radians(40.0)  # lean of the pushing fingers towards the push
PUSH_LANE = 0.02  # lateral and vertical tolerance of the pushing hand
DOOR_PUSH_REACH = 0.45  # nearest horizontal distance from the robot's base at which the hand pushes a door
KNOB_WIDTH = 0.025  # a stove knob's ridge, across
WRIST_REST = np.pi / 4  # the wrist joint's rest angle (LIBERO's Panda `init_qpos`: the OSC's nullspace posture)
WRIST_REST_WEIGHT = 3.0  # cost of the wrist's distance from rest per radian, against 1 per radian of yaw

# Simple kinematic model of the OSC used for open-loop chunks: the end effector covers this fraction of the commanded
# delta per step (measured: a sustained full action moves it about 1-1.5 cm per 20 Hz step, out of 5 cm asked).
OSC_RESPONSE = 0.25
GRIPPER_SPEED = 0.01  # change of `gripper_opening` per step


def supported_tasks(suite: str) -> tuple[int, ...]:
    """Task ids of `suite` that `ScriptedLiberoExpert` supports (an empty tuple for an unknown or unsupported suite)."""
    return SUPPORTED_TASKS.get(suite, ())


# ------------------------------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------------------------------


def _axis_angle(rot: np.ndarray) -> np.ndarray:
    """Rotation matrix -> axis * angle."""
    cos = np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    if np.pi - angle < 1e-4:
        # Near pi the antisymmetric part vanishes; take the axis from the symmetric part.
        sym = (rot + np.eye(3)) / 2.0
        axis = sym[:, np.argmax(np.diag(sym))]
        return axis / np.linalg.norm(axis) * angle
    return axis / (2.0 * np.sin(angle)) * angle


def _rotation(axis_angle: np.ndarray) -> np.ndarray:
    angle = np.linalg.norm(axis_angle)
    if angle < 1e-9:
        return np.eye(3)
    k = axis_angle / angle
    skew = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew


def _down_frame(closing_axis: np.ndarray, current: np.ndarray, wrist: float | None = None) -> np.ndarray:
    """Grip-site rotation with the fingers pointing down and closing along `closing_axis` (horizontal); of the two
    equivalent yaws (the gripper is symmetric) the one nearer the current frame, or, given the last arm joint's angle
    `wrist`, the one that leaves it nearer its rest angle (`_yaw_cost`)."""
    x = np.array([closing_axis[0], closing_axis[1], 0.0])
    x /= np.linalg.norm(x) + 1e-12
    if x @ current[:, 0] < 0:
        x = -x
    if wrist is not None and _yaw_cost(-x, current, wrist) < _yaw_cost(x, current, wrist):
        x = -x
    z = np.array([0.0, 0.0, -1.0])
    return np.stack([x, np.cross(z, x), z], axis=1)


def _level_frame(
    pointing: np.ndarray, current: np.ndarray, wrist: float, closing_axis: np.ndarray | None = None
) -> np.ndarray:
    """Grip-site rotation with the fingers pointing along `pointing` (horizontal) and closing up and down (or along
    `closing_axis`, perpendicular to `pointing`); of the two (closing up, closing down: a roll of pi apart), the one that leaves the wrist joint (its angle `wrist` now)
    nearer its rest angle.

    The wrist turns about the approach axis: after the least swing of the approach axis onto `pointing`, the roll
    left to do is about what the wrist turns by, so the angle it ends at holds while the hand turns, and the choice
    with it. Choosing by which way the fingers already lean flips with noise while the hand still points down, and
    half the time rolls the wrist past its limit (2.9 rad), where the OSC throws the arm up and straight."""
    swing_axis = np.cross(current[:, 2], pointing)
    swing_angle = np.arctan2(np.linalg.norm(swing_axis), float(current[:, 2] @ pointing))
    swung = _rotation(swing_axis / (np.linalg.norm(swing_axis) + 1e-12) * swing_angle) @ current[:, 0]
    best, best_cost = None, np.inf
    closing_axis = np.array([0.0, 0.0, 1.0]) if closing_axis is None else closing_axis
    for up in (1.0, -1.0):
        closing = up * closing_axis
        roll = float(np.arctan2(np.cross(swung, closing) @ pointing, swung @ closing))
        cost = abs(wrist + roll - WRIST_REST)
        if cost < best_cost:
            best, best_cost = np.stack([closing, np.cross(pointing, closing), pointing], axis=1), cost
    return best


def _yaw_cost(x: np.ndarray, current: np.ndarray, wrist: float) -> float:
    """Cost of turning the grip site's closing axis from `current[:, 0]` to `x` (both horizontal): the yaw, plus how
    far from its rest angle the turn leaves the wrist.

    The wrist joint turns about the approach axis (world -z with the fingers down): a yaw of +a about world z moves
    it by -a (measured), so the angle a turn ends at barely changes while the hand turns, and turning towards one of
    two yaws lowers its cost and raises the other's: the choice holds on the way. The OSC's nullspace pulls the
    joints back to their rest posture; a grasp that leaves the wrist far from it (near the robot's base, where the
    fingers-down hand lines up joints 5 and 7) lets the arm drift along that pull until joints 5 and 7 reach their
    limits while it lifts (libero_10 task 7)."""
    yaw = float(np.arctan2(current[0, 0] * x[1] - current[1, 0] * x[0], current[:2, 0] @ x[:2]))
    return abs(yaw) + WRIST_REST_WEIGHT * abs(wrist - yaw - WRIST_REST)


def _kept(state: Mapping[str, np.ndarray], exclude_pick: bool) -> np.ndarray:
    kinds = np.asarray(state["obstacle_kind"])
    keep = kinds >= 0
    if exclude_pick:
        keep &= kinds != OBSTACLE_PICK
    return keep


def _obstacles(state: Mapping[str, np.ndarray], exclude_pick: bool = True) -> np.ndarray:
    """World bounds of the obstacles (rows of `obstacle_boxes`), without the object to pick."""
    return np.asarray(state["obstacle_boxes"], np.float64)[_kept(state, exclude_pick)]


def _obstacle_obbs(state: Mapping[str, np.ndarray], exclude_pick: bool = True) -> np.ndarray:
    """The same obstacles as boxes turned about the vertical (rows of `obstacle_obbs`)."""
    return np.asarray(state["obstacle_obbs"], np.float64)[_kept(state, exclude_pick)]


def _corridor_top(boxes: np.ndarray, start: np.ndarray, end: np.ndarray, pad: float) -> float:
    """Highest top of the boxes whose footprint comes within `pad` of the segment start -> end (xy)."""
    if len(boxes) == 0:
        return -np.inf
    seg = end - start
    length2 = float(seg @ seg)
    ts = np.linspace(0.0, 1.0, 12) if length2 > 1e-8 else np.zeros(1)
    points = start[None] + ts[:, None] * seg[None]  # [T, 2]
    # distance from each sample point to each box footprint
    dx = np.maximum(0, np.maximum(boxes[None, :, 0] - points[:, None, 0], points[:, None, 0] - boxes[None, :, 3]))
    dy = np.maximum(0, np.maximum(boxes[None, :, 1] - points[:, None, 1], points[:, None, 1] - boxes[None, :, 4]))
    near = (np.hypot(dx, dy) < pad).any(0)
    return float(boxes[near, 5].max()) if near.any() else -np.inf


def _gripper_collision(site: np.ndarray, axis: np.ndarray, obbs: np.ndarray, rise: float = 0.0) -> float:
    """Deepest penetration of the open gripper (two fingers and the hand, at `site`, closing along `axis`, swept
    `rise` metres up) into the obstacles `obbs` (rows of `obstacle_obbs`: boxes turned about the vertical); 0 when
    it is free. Separating-axis test in xy (the hand's two horizontal axes and each box's two), interval test in z."""
    if len(obbs) == 0:
        return 0.0
    u = np.array([axis[0], axis[1]]) / (np.linalg.norm(axis[:2]) + 1e-12)
    v = np.array([-u[1], u[0]])
    cos, sin = np.cos(obbs[:, 6]), np.sin(obbs[:, 6])
    first, second = np.stack([cos, sin], 1), np.stack([-sin, cos], 1)  # each box's horizontal axes [N, 2]
    axes = np.stack([np.broadcast_to(u, first.shape), np.broadcast_to(v, first.shape), first, second])  # [4, N, 2]
    offset, half_u, half_v, z_low, z_high = (column[:, None] for column in _GRIPPER_PARTS.T)  # each [3, 1]
    gap = site[:2] + offset[..., None] * u - obbs[:, :2]  # [3 parts, N, 2]
    depth = np.minimum(obbs[:, 2] + obbs[:, 5] - (site[2] + z_low), site[2] + z_high + rise - obbs[:, 2] + obbs[:, 5])
    reach = (
        np.abs(axes @ u)[:, None] * half_u
        + np.abs(axes @ v)[:, None] * half_v
        + (np.abs((axes * first).sum(-1)) * obbs[:, 3] + np.abs((axes * second).sum(-1)) * obbs[:, 4])[:, None]
    )  # [4 axes, 3 parts, N]
    separation = np.abs(np.einsum("pnk,ank->apn", gap, axes))
    depth = np.minimum(depth, (reach - separation).min(0))
    return max(float(depth.max()), 0.0)


# ------------------------------------------------------------------------------------------------------------------
# Grasp selection
# ------------------------------------------------------------------------------------------------------------------


def _grasp(state: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
    """`(site position, closing axis, object width across the fingers)` of the grasp to make."""
    box = np.asarray(state["pick_box"], np.float64)
    local = np.asarray(state["pick_local_box"], np.float64)
    rot = np.asarray(state["pick_xmat"], np.float64).reshape(3, 3)
    centre = np.asarray(state["pick_pos"], np.float64) + rot @ ((local[:3] + local[3:]) / 2)
    extent = local[3:] - local[:3]
    bottom, top = box[2], box[5]
    # Horizontal axes of the object's own box that fit between the open fingers.
    axes = [i for i in range(3) if abs(rot[2, i]) < 0.7 and extent[i] < FINGER_OPEN_WIDTH - 0.012]
    if not axes:
        part = _part_grasp(state) if _closed_top(state) else None
        return part if part is not None else _rim_grasp(state, box, top)
    z = max(bottom + FINGERTIP_BELOW + 0.004, top - 0.035)
    obstacles = _obstacle_obbs(state)
    current = np.asarray(state["eef_xmat"], np.float64).reshape(3, 3)[:, 0]
    best, best_score = None, np.inf
    narrowest = min(extent[i] for i in axes)
    for i in axes:
        along = [j for j in range(3) if j != i and abs(rot[2, j]) < 0.7]
        length = extent[along[0]] if along else extent[i]
        slide = rot[:, along[0]] if along else np.zeros(3)
        for yaw in np.radians([0.0, -12.0, 12.0, -24.0, 24.0]):
            # A slanted grasp spans more of the object; it helps when a neighbour blocks the hand.
            width = extent[i] * np.cos(yaw) + length * abs(np.sin(yaw))
            if width > FINGER_OPEN_WIDTH - 0.01:
                continue
            axis = np.cos(yaw) * rot[:, i] + np.sin(yaw) * slide
            for shift in np.linspace(-1.0, 1.0, 5) * max(0.0, length / 2 - 0.02):
                site = np.array([centre[0], centre[1], z]) + shift * slide
                site[2] = z
                collision = _gripper_collision(site, axis, obstacles, rise=PRE_GRASP)
                score = (
                    100.0 * collision
                    + abs(shift)
                    + 0.05 * abs(yaw)
                    + 2.0 * (extent[i] - narrowest)
                    + 0.01 * np.arccos(min(1.0, abs(axis[:2] @ current[:2]) / (np.linalg.norm(axis[:2]) + 1e-9)))
                )
                if score < best_score:
                    best, best_score = (site, axis, width), score
    return best


def _parts(state: Mapping[str, np.ndarray]) -> np.ndarray:
    parts = np.asarray(state["pick_parts"], np.float64)
    return parts[np.any(parts != 0, axis=1)]


def _closed_top(state: Mapping[str, np.ndarray]) -> bool:
    """Whether a part of the pick object covers its middle up to near its top (a moka pot), so that no rim is there
    to grasp, unlike a bowl or a mug."""
    local = np.asarray(state["pick_local_box"], np.float64)
    rot = np.asarray(state["pick_xmat"], np.float64).reshape(3, 3)
    up = int(np.argmax(np.abs(rot[2])))
    centre = (local[:3] + local[3:]) / 2
    top = local[3 + up] if rot[2, up] > 0 else -local[up]
    for part in _parts(state):
        covers = all(part[i] <= centre[i] <= part[3 + i] for i in range(3) if i != up)
        part_top = part[3 + up] if rot[2, up] > 0 else -part[up]
        if covers and part_top > top - 0.025:
            return True
    return False


def _part_grasp(state: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Grasp a narrow part of an object too wide to grasp whole (a moka pot's handle): across the part's narrow
    horizontal side, the highest whose open fingers clear the object's other parts and the obstacles; `None` if
    there is none."""
    rot = np.asarray(state["pick_xmat"], np.float64).reshape(3, 3)
    origin = np.asarray(state["pick_pos"], np.float64)
    parts = _parts(state)
    world = np.array([_world_box(origin, rot, part) for part in parts])
    obstacles = _obstacle_obbs(state)
    eef = np.asarray(state["eef_pos"], np.float64)
    best, best_score = None, np.inf
    for k, part in enumerate(parts):
        extent = part[3:] - part[:3]
        for i in (i for i in range(3) if abs(rot[2, i]) < 0.7 and extent[i] < PART_MAX_WIDTH):
            top, bottom = world[k, 5], world[k, 2]
            z = max(top - 0.02, bottom + FINGERTIP_BELOW + 0.004)
            centre = origin + rot @ ((part[:3] + part[3:]) / 2)
            site = np.array([centre[0], centre[1], z])
            # The part and whatever lies between the fingers' inner faces is held; everything else must stay clear.
            others = np.delete(world, k, axis=0)
            clear = np.concatenate([obbs_of_bounds(others), obstacles])
            if _gripper_collision(site, rot[:, i], clear, rise=PRE_GRASP) > 1e-5:
                continue
            # The highest free part: a handle's top rather than a spout.
            score = -z + 0.05 * np.linalg.norm(site[:2] - eef[:2])
            if score < best_score:
                best, best_score = (site, rot[:, i], float(extent[i])), score
    return best


def _world_box(origin: np.ndarray, rot: np.ndarray, local: np.ndarray) -> np.ndarray:
    centre = origin + rot @ ((local[:3] + local[3:]) / 2)
    half = np.abs(rot) @ ((local[3:] - local[:3]) / 2)
    return np.concatenate([centre - half, centre + half])


def _rim_grasp(state: Mapping[str, np.ndarray], box: np.ndarray, top: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Grasp the wall of a wide, open object (a bowl): pick the rim side whose fingers clear every obstacle, then the
    one nearest the robot and the target (reach)."""
    centre = (box[:3] + box[3:]) / 2
    radius = min(box[3] - box[0], box[4] - box[1]) / 2 - 0.008
    z = top - 0.012
    obstacles = _obstacle_obbs(state)
    overhead = obbs_of_bounds(_overhead(state))
    if len(overhead):
        goal_xy, goal_bottom = _placement(state)
        to_goal = np.array([*(goal_xy - centre[:2]), goal_bottom - box[2]])
    eef = np.asarray(state["eef_pos"], np.float64)
    place = (np.asarray(state["place_box"][:3]) + np.asarray(state["place_box"][3:])) / 2
    best, best_score = None, np.inf
    for angle in np.linspace(0, 2 * np.pi, RIM_CANDIDATES, endpoint=False):
        u = np.array([np.cos(angle), np.sin(angle), 0.0])
        site = np.array([centre[0], centre[1], z]) + radius * u
        # The hand must fit here and, holding the object, under what hangs over where it puts it.
        collision = _gripper_collision(site, u, obstacles, rise=PRE_GRASP)
        if len(overhead):
            collision += _gripper_collision(site + to_goal, u, overhead, rise=PLACE_RISE)
        # Reach: the rim side towards the robot base (x = -0.66 in LIBERO's scenes) and towards the target keeps the
        # arm away from its joint limits.
        reach = -u[0] * 0.5 + 0.3 * (u[:2] @ (place[:2] - centre[:2])) / (
            np.linalg.norm(place[:2] - centre[:2]) + 1e-9
        )
        score = 100.0 * collision - reach + 0.05 * np.linalg.norm(site[:2] - eef[:2])
        if score < best_score:
            best, best_score = (site, u), score
    site, u = best
    return site, u, 0.01


# ------------------------------------------------------------------------------------------------------------------
# The controller
# ------------------------------------------------------------------------------------------------------------------


def _move(eef: np.ndarray, target: np.ndarray, current_rot: np.ndarray, target_rot: np.ndarray) -> np.ndarray:
    action = np.zeros(7)
    action[:3] = np.clip(POS_GAIN * (target - eef) / POS_SCALE, -1.0, 1.0)
    action[3:6] = np.clip(ROT_GAIN * _axis_angle(target_rot @ current_rot.T) / ROT_SCALE, -1.0, 1.0)
    return action


def _climb_first(eef_z: float, fly: float) -> np.float64:
    """How much of the horizontal motion a hand `fly - eef_z` below its flying height keeps: none 8 cm or more below,
    all of it at that height (it climbs over what lies between before it flies on)."""
    return np.clip(1.0 - (fly - eef_z) / 0.08, 0.0, 1.0)


def _fly_height(xy_error: float, low: float, high: float) -> float:
    """Memoryless funnel: the height allowed above `low` grows with the horizontal error, up to `high`."""
    return min(max(high, low), low + FUNNEL_SLOPE * max(0.0, xy_error - XY_TOL))


def is_grasped(state: Mapping[str, np.ndarray]) -> bool:
    """Both fingers touch the object to pick, and the gripper is not closed on itself."""
    return bool(np.all(np.asarray(state["pick_contacts"]) > 0.5) and state["gripper_opening"][0] > 0.002)


def expert_action(state: Mapping[str, np.ndarray]) -> np.ndarray:
    """The expert's action `(7,)` in LIBERO's controller units, a pure function of the privileged state."""
    eef = np.asarray(state["eef_pos"], np.float64)
    rot = np.asarray(state["eef_xmat"], np.float64).reshape(3, 3)
    upright = _down_frame(rot[:, 0], rot)

    if state["success"][0] > 0.5:
        action = _move(eef, eef + np.array([0.0, 0.0, 0.05]), rot, upright)
        action[6] = OPEN
        return action.astype(np.float32)

    obstacles = _obstacles(state)
    if int(state["subgoal_kind"][0]) == SUBGOAL_TURN_ON:
        return _turn_knob(state, obstacles)
    if int(state["subgoal_kind"][0]) == SUBGOAL_CLOSE:
        return _push_closed(state, obstacles)
    if int(state["subgoal_kind"][0]) == SUBGOAL_OPEN:
        return _pull_open(state, obstacles)
    roof = _roof_bottom(state) if int(state["subgoal_kind"][0]) == SUBGOAL_IN else None
    if roof is not None:
        return _side_insert(state, roof)

    if is_grasped(state):
        return _carry(state, obstacles, *_placement(state))

    return _approach(state, *_grasp(state), obstacles)


def _carry(
    state: Mapping[str, np.ndarray], obstacles: np.ndarray, goal_xy: np.ndarray, goal_bottom: float
) -> np.ndarray:
    """Carry the grasped object (fingers down) over what lies between and set it down with its box's centre at
    `goal_xy` and its bottom at `goal_bottom`; open there."""
    eef = np.asarray(state["eef_pos"], np.float64)
    rot = np.asarray(state["eef_xmat"], np.float64).reshape(3, 3)
    upright = _down_frame(rot[:, 0], rot)
    pick_box = np.asarray(state["pick_box"], np.float64)
    obj_xy = (pick_box[:2] + pick_box[3:5]) / 2
    bottom_below_eef = eef[2] - pick_box[2]
    half = np.max(pick_box[3:5] - pick_box[:2]) / 2
    # Whatever overlaps the object moves with it (a bowl stacked in it, a plate stuck to it): not an obstacle.
    apart = np.any((obstacles[:, :3] > pick_box[3:] + 0.005) | (obstacles[:, 3:] < pick_box[:3] - 0.005), axis=1)
    carry_bottom = _corridor_top(obstacles[apart], obj_xy, goal_xy, half + 0.02) + CLEARANCE
    carry_bottom = float(np.clip(carry_bottom, goal_bottom + 0.05, goal_bottom + MAX_LIFT))
    xy_error = float(np.linalg.norm(goal_xy - obj_xy))
    bottom = _fly_height(xy_error, goal_bottom, carry_bottom)
    if state["place_inside"][0] < 0.5 and state["place_shared"][0] > 0.5:
        # Where several objects go on one target, never lower the object onto one it is passing over (the first
        # pot, beside the second's spot). Elsewhere a neighbour of the target must not hold it up.
        bottom = max(bottom, _top_below(state, pick_box) + 0.01)
    target = np.concatenate([eef[:2] + (goal_xy - obj_xy), [bottom + bottom_below_eef]])
    action = _move(eef, target, rot, upright)
    lift = carry_bottom - pick_box[2]
    if lift > 0.02 and xy_error > 3 * XY_TOL:
        # Still too low to fly over what lies between: go up first.
        action[:2] *= np.clip(1.0 - lift / 0.05, 0.0, 1.0)
    released = xy_error < 2 * XY_TOL and pick_box[2] - goal_bottom < 0.015
    action[6] = OPEN if released else CLOSE
    return action.astype(np.float32)


def _approach(
    state: Mapping[str, np.ndarray],
    site: np.ndarray,
    axis: np.ndarray,
    width: float,
    obstacles: np.ndarray,
    turn: float = 0.0,
) -> np.ndarray:
    """Fly to the grasp `site` (fingers closing along `axis` around `width`), descend through the funnel and close;
    `turn` is a yaw the grasp will make afterwards (kept within the wrist's range)."""
    eef = np.asarray(state["eef_pos"], np.float64)
    rot = np.asarray(state["eef_xmat"], np.float64).reshape(3, 3)
    opening = float(state["gripper_opening"][0])
    pick_box = np.asarray(state["pick_box"], np.float64)
    target_rot = _down_frame(axis, rot, float(state["joint_pos"][6]) - turn)
    xy_error = float(np.linalg.norm(site[:2] - eef[:2]))
    yaw_error = float(np.linalg.norm(_axis_angle(target_rot @ rot.T)))
    fly = max(_corridor_top(obstacles, eef[:2], site[:2], HAND_BOX[1]) + FINGERTIP_BELOW + CLEARANCE, 0.0)
    fly = max(fly, site[2] + PRE_GRASP, pick_box[5] + FINGERTIP_BELOW + 0.02)
    needed_open = min(FINGER_OPEN_WIDTH - 0.004, width + 0.03)
    at_grasp = xy_error < GRASP_XY_TOL and abs(eef[2] - site[2]) < GRASP_Z_TOL
    near = xy_error < NEAR_GRASP
    if at_grasp:
        z = site[2]
    elif opening >= needed_open and yaw_error < 0.2:
        z = _fly_height(xy_error, site[2], fly)
        if near and eef[2] < z:
            # Below the funnel but near the object: hold the height (above the object's top while the fingers are
            # off-centre) and centre first, instead of climbing back up the funnel. The label then changes smoothly
            # with the hand's position, which a student that sees the scene only roughly can learn.
            floor = site[2] if xy_error < GRASP_CENTRED else pick_box[5] + FINGERTIP_BELOW + 0.01
            z = max(eef[2], floor)
    else:
        # Do not descend onto the object before the fingers are open and turned.
        z = max(eef[2] if near else fly, site[2] + 0.03)
    action = _move(eef, np.array([site[0], site[1], z]), rot, target_rot)
    if eef[2] < fly - 0.02 and not near:
        action[:2] *= _climb_first(eef[2], fly)
    if opening < LET_GO_OPENING and not near:
        # The fingers are still closed on what the last subgoal moved (a pot just set on the stove, a turned knob):
        # let go before the hand leaves, or it carries the object off again.
        action[:6] = 0.0
    elif rot[2, 2] > -np.cos(TILTED):
        # The hand still points sideways (it pulled a drawer open, level): turn it down slowly on the way back
        # towards the robot's base and up to the height of LIBERO's start pose, never along y, into the drawer it
        # just let go of. Turning it fast, where it is, takes the arm, stretched towards the cabinet, to its elbow's
        # limit (joint 4 at -0.07 rad), a straight arm the OSC does not bend again.
        # The turn is the least one that points the fingers down; the grasp's yaw follows once they do.
        action[:6] = _turn_down_towards_base(eef, rot)[:6]
    touching = float(np.asarray(state["pick_contacts"]).sum()) > 0
    # Physics gives the hysteresis a memoryless controller lacks: once the fingers closed on nothing and started to
    # reopen, let them open fully before closing again.
    reopening = _fingers_opening(state)
    closed_on_nothing = opening < CLOSED_ON_NOTHING and not touching
    if at_grasp and not closed_on_nothing and not (reopening and opening < needed_open):
        action[6] = CLOSE
    else:
        action[6] = OPEN
    return action.astype(np.float32)


def _roof_bottom(state: Mapping[str, np.ndarray]) -> float | None:
    """The bottom of a fixture part over the middle of the region the pick object goes `In` (a microwave's roof),
    when it is too low for a hand holding the object from above to pass under; `None` otherwise."""
    place_box = np.asarray(state["place_box"], np.float64)
    pick_box = np.asarray(state["pick_box"], np.float64)
    boxes = _overhead(state)
    centre = (place_box[:2] + place_box[3:5]) / 2
    roofs = boxes[np.all(boxes[:, :2] < centre, 1) & np.all(boxes[:, 3:5] > centre, 1)]
    if len(roofs) == 0:
        return None
    bottom = float(roofs[:, 2].min())
    return bottom if bottom < place_box[2] + (pick_box[5] - pick_box[2]) + HAND_BOX[4] else None


def _open_side(state: Mapping[str, np.ndarray]) -> np.ndarray:
    """The horizontal direction in which an object enters the region it goes `In` through its open face: of the
    region's four side faces, the one least covered by the walls (fixture parts from its floor to its roof) standing
    at it."""
    place_box = np.asarray(state["place_box"], np.float64)
    boxes = _walls(state)
    best, best_cover = None, np.inf
    for axis in (0, 1):
        other = 1 - axis
        span = place_box[3 + other] - place_box[other]
        for sign in (-1.0, 1.0):
            face = place_box[axis] if sign < 0 else place_box[3 + axis]
            near = (boxes[:, axis] < face + 0.04) & (boxes[:, 3 + axis] > face - 0.04)
            low = np.clip(boxes[near, other], place_box[other], place_box[3 + other])
            high = np.clip(boxes[near, 3 + other], place_box[other], place_box[3 + other])
            cover = float(np.sum(high - low)) / span
            if cover < best_cover:
                best, best_cover = np.eye(3)[axis] * -sign, cover
    return best


def _walls(state: Mapping[str, np.ndarray]) -> np.ndarray:
    """World bounds of the fixture parts that stand from the floor to the roof of the region the pick object goes
    `In` (a microwave's walls)."""
    place_box = np.asarray(state["place_box"], np.float64)
    kinds = np.asarray(state["obstacle_kind"])
    boxes = np.asarray(state["obstacle_boxes"], np.float64)[(kinds == OBSTACLE_FIXTURE) | (kinds == OBSTACLE_PLACE)]
    return boxes[(boxes[:, 2] < place_box[2] + 0.03) & (boxes[:, 5] > place_box[5] - 0.03)]


def _handle_bar(state: Mapping[str, np.ndarray]) -> np.ndarray:
    """World centre of the pick object's part farthest from its origin horizontally (a mug's handle)."""
    rot = np.asarray(state["pick_xmat"], np.float64).reshape(3, 3)
    origin = np.asarray(state["pick_pos"], np.float64)
    parts = _parts(state)
    centres = origin + ((parts[:, :3] + parts[:, 3:]) / 2) @ rot.T
    return centres[int(np.argmax(np.linalg.norm(centres[:, :2] - origin[:2], axis=1)))]


def _level_hand_hits(site: np.ndarray, pointing: np.ndarray, obbs: np.ndarray, rise: float) -> bool:
    """Whether the body of a level hand at `site` (pointing along `pointing`, closing horizontally), swept `rise`
    metres up, meets any of the boxes `obbs` (rows of `obstacle_obbs`)."""
    if len(obbs) == 0:
        return False
    p = pointing[:2] / (np.linalg.norm(pointing[:2]) + 1e-12)
    u = np.array([-p[1], p[0]])
    near, far = HAND_BOX[3], HAND_BOX[4]
    centre = site[:2] - p * (near + far) / 2
    half_p, half_u, half_z = (far - near) / 2, HAND_BOX[1], HAND_BOX[2]
    overlap = (obbs[:, 2] - obbs[:, 5] < site[2] + half_z + rise) & (obbs[:, 2] + obbs[:, 5] > site[2] - half_z)
    cos, sin = np.cos(obbs[:, 6]), np.sin(obbs[:, 6])
    first, second = np.stack([cos, sin], 1), np.stack([-sin, cos], 1)
    gap = obbs[:, :2] - centre
    for axes in (np.broadcast_to(p, first.shape), np.broadcast_to(u, first.shape), first, second):
        reach = np.abs(axes @ p) * half_p + np.abs(axes @ u) * half_u
        reach = reach + np.abs((axes * first).sum(1)) * obbs[:, 3] + np.abs((axes * second).sum(1)) * obbs[:, 4]
        overlap &= np.abs((gap * axes).sum(1)) < reach
    return bool(overlap.any())


SIDE_RISE = 0.12  # the level hand turns this far above the handle, then comes down onto it
SIDE_LANE = 0.01  # lateral tolerance of the object lined up in front of the opening
SIDE_DEPTH = 0.012  # how far inside the open face the object's near side goes
SIDE_SPEED = 0.4  # fraction of full speed at which the object held by its handle goes in (it swings on the handle)
SIDE_STAGING = 0.12  # how far in front of the open face the object is set down for the level hand to take it


def _side_frame(pointing: np.ndarray, current: np.ndarray, wrist: float) -> np.ndarray:
    """The level frame pointing along `pointing` with the fingers closing horizontally: while the hand still turns,
    the roll that leaves the wrist nearer its rest (`_level_frame`); once it points about there, the nearer of the
    two, so that the choice no longer changes with the wrist's angle on the way down."""
    closing = np.cross([0.0, 0.0, 1.0], pointing)
    if float(current[:, 2] @ pointing) < 0.9:
        return _level_frame(pointing, current, wrist, closing)
    if closing @ current[:, 0] < 0:
        closing = -closing
    return np.stack([closing, np.cross(pointing, closing), pointing], axis=1)


def _side_insert(state: Mapping[str, np.ndarray], roof: float) -> np.ndarray:
    """`In` under a low roof (the mug into the microwave): hold the object by its handle with the hand level,
    closing across the handle, pointing through the region's open face (turned aside as little as keeps the hand
    clear of the neighbours); lift it over them, line it up in front of the opening, lower it to the floor's height
    and carry it in, handle last, the hand staying outside. `roof`: the bottom of the roof (`_roof_bottom`)."""
    eef = np.asarray(state["eef_pos"], np.float64)
    rot = np.asarray(state["eef_xmat"], np.float64).reshape(3, 3)
    wrist = float(state["joint_pos"][6])
    opening = float(state["gripper_opening"][0])
    pick_box = np.asarray(state["pick_box"], np.float64)
    place_box = np.asarray(state["place_box"], np.float64)
    into = _open_side(state)
    origin = np.asarray(state["pick_pos"], np.float64)
    half = 0.5 * float(np.min(pick_box[3:5] - pick_box[:2]))
    axis = int(np.argmax(np.abs(into)))
    face = place_box[axis] if into[axis] > 0 else place_box[3 + axis]
    goal = np.array([*((place_box[:2] + place_box[3:5]) / 2), 0.0])
    goal[axis] = face + into[axis] * (half + SIDE_DEPTH)
    staging = goal.copy()
    staging[axis] = face - into[axis] * (half + SIDE_STAGING)
    obstacles = _obstacles(state)
    kinds = np.asarray(state["obstacle_kind"])
    objects = np.asarray(state["obstacle_boxes"], np.float64)[kinds == OBSTACLE_OBJECT]
    table = float(objects[:, 2].min()) if len(objects) else float(pick_box[2])
    site = _handle_bar(state)
    grasped = is_grasped(state)
    if not grasped and rot[2, 2] > -0.7 and CLOSED_ON_NOTHING < opening < LET_GO_OPENING:
        # The level fingers closed on the handle, one of them for a moment not touching it (it swings as it goes in).
        grasped = float(np.linalg.norm(eef - site)) < 0.02
    if grasped and rot[2, 2] < -0.7:
        # Held from above (by the rim): set it down in front of the opening, where the level hand can take it.
        return _carry(state, obstacles, staging[:2] + (pick_box[:2] + pick_box[3:5]) / 2 - origin[:2], table)
    staged = np.linalg.norm((origin - staging)[:2]) < 0.02 and pick_box[2] < table + 0.01
    if not grasped and not staged:
        return _approach(state, *_grasp(state), obstacles)
    if not grasped:
        obbs = _obstacle_obbs(state)
        best, best_score = into, np.inf
        for yaw in (0.0, 0.2, -0.2, 0.4, -0.4, 0.6, -0.6):
            pointing = _rotation(np.array([0.0, 0.0, yaw])) @ into
            score = 10.0 * _level_hand_hits(site, pointing, obbs, SIDE_RISE) + abs(yaw)
            if score < best_score:
                best, best_score = pointing, score
        frame = _side_frame(best, rot, wrist)
        turn_error = float(np.linalg.norm(_axis_angle(frame @ rot.T)))
        rel = eef - site
        xy_error = float(np.linalg.norm(rel[:2]))
        at_grasp = xy_error < GRASP_XY_TOL and abs(rel[2]) < GRASP_Z_TOL
        high = max(pick_box[5] + 0.05, site[2] + SIDE_RISE)
        if turn_error > 0.15 and eef[2] < high - 0.02:
            target = np.array([eef[0], eef[1], high])  # out of the rim it let go of, then turn
            frame = rot
        elif turn_error > 0.15:
            target = np.array([site[0], site[1], max(high, eef[2])])
            if xy_error > 0.02:
                # Over the handle first, pointing down: turning on the way there swept the wrist into a door that
                # stands open beside the handle.
                frame = rot
        else:
            target = np.array([site[0], site[1], _fly_height(xy_error, site[2], high)])
        action = _move(eef, target, rot, frame)
        if turn_error > 0.15:
            action[:3] *= 0.5
        touching = float(np.asarray(state["pick_contacts"]).sum()) > 0
        closed_on_nothing = opening < CLOSED_ON_NOTHING and not touching
        action[6] = CLOSE if at_grasp and not closed_on_nothing else OPEN
        return action.astype(np.float32)

    frame = _side_frame(into, rot, wrist)
    turn_error = float(np.linalg.norm(_axis_angle(frame @ rot.T)))
    carry_bottom = max(place_box[2] + 0.03, roof - (pick_box[5] - pick_box[2]) - 0.012)
    grip_above_bottom = eef[2] - pick_box[2]
    boxes = obstacles
    around = np.all(boxes[:, :2] < eef[:2] + 0.2, 1) & np.all(boxes[:, 3:5] > eef[:2] - 0.2, 1)
    around &= boxes[:, 5] < place_box[2] + 0.1  # not the microwave
    top = float(boxes[around, 5].max()) if around.any() else 0.0
    clear_bottom = max(carry_bottom, top + HAND_BOX[2] + 0.015 - grip_above_bottom)
    to_staging = staging - origin
    to_staging[2] = 0.0
    entered = float((origin - staging) @ into) > 0.01
    if not entered and np.linalg.norm(to_staging[:2]) > SIDE_LANE:
        if pick_box[2] < clear_bottom - 0.01 and turn_error > 0.1:
            target = eef + np.array([0.0, 0.0, clear_bottom - pick_box[2] + 0.005])  # up first, then turn
            action = _move(eef, target, rot, rot)
        else:
            target = eef + to_staging
            target[2] = eef[2] + (clear_bottom - pick_box[2])
            action = _move(eef, target, rot, frame)
            if turn_error > 0.1:
                action[:3] *= 0.3
    elif not entered and pick_box[2] > carry_bottom + 0.01:
        target = eef + to_staging
        target[2] = eef[2] + (carry_bottom - pick_box[2])
        action = _move(eef, target, rot, frame)
    else:
        rel = origin - goal
        rel[2] = 0.0
        target = eef - rel
        target[2] = eef[2] + (carry_bottom - pick_box[2])
        action = _move(eef, target, rot, frame)
        action[:3] *= SIDE_SPEED
        action[:2] *= _climb_first(pick_box[2], carry_bottom)  # over the opening's lip first
    placed = float(np.linalg.norm((origin - goal)[:2])) < 2 * XY_TOL
    action[6] = OPEN if placed else CLOSE
    return action.astype(np.float32)


def _turn_down_towards_base(eef: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Turn a hand that points sideways down, by the least turn, at half speed, while it moves back towards the
    robot's base and up to the height of LIBERO's start pose (see `_approach`)."""
    tilt = np.cross(rot[:, 2], [0.0, 0.0, -1.0])
    tilt *= np.arccos(np.clip(-rot[2, 2], -1.0, 1.0)) / (np.linalg.norm(tilt) + 1e-12)
    action = _move(eef, np.array([HOME[0], eef[1], HOME[2]]), rot, _rotation(tilt) @ rot)
    action[3:6] *= 0.5
    return action


def _top_below(state: Mapping[str, np.ndarray], pick_box: np.ndarray) -> float:
    """Highest top of the objects and fixtures (not the target) under the pick object's footprint and below it."""
    kinds = np.asarray(state["obstacle_kind"])
    boxes = np.asarray(state["obstacle_boxes"], np.float64)[(kinds == OBSTACLE_OBJECT) | (kinds == OBSTACLE_FIXTURE)]
    under = (
        np.all(boxes[:, :2] < pick_box[3:5], axis=1)
        & np.all(boxes[:, 3:5] > pick_box[:2], axis=1)
        & (boxes[:, 5] < pick_box[2] + 0.02)
    )
    return float(boxes[under, 5].max()) if under.any() else -np.inf


def _placement(state: Mapping[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """Where the pick object goes: the xy of its box's centre and the height of its bottom, set down on the target
    (at `_free_spot`) or inside it."""
    pick_box = np.asarray(state["pick_box"], np.float64)
    place_box = np.asarray(state["place_box"], np.float64)
    if int(state["subgoal_kind"][0]) == SUBGOAL_CLEAR:
        return _out_of_the_way(state, pick_box, place_box)
    origin_offset = (pick_box[:2] + pick_box[3:5]) / 2 - np.asarray(state["pick_pos"][:2], np.float64)
    bottom = place_box[2] + 0.015 if state["place_inside"][0] > 0.5 else place_box[5] + 0.008
    return _free_spot(state, pick_box, place_box) + origin_offset, float(bottom)


def _out_of_the_way(
    state: Mapping[str, np.ndarray], pick_box: np.ndarray, place_box: np.ndarray
) -> tuple[np.ndarray, float]:
    """Where a `Clear` sets the object down (its box centre, xy, and its bottom): on the table's top, on the ring of
    spots just outside the box it must leave (`place_box`), the nearest spot whose footprint is free of everything
    else, at a comfortable reach from the robot's base."""
    centre = (pick_box[:2] + pick_box[3:5]) / 2
    half = (pick_box[3:5] - pick_box[:2]) / 2
    rings = []
    for gap in CLEAR_GAPS:
        low, high = place_box[:2] - half - gap, place_box[3:5] + half + gap
        xs, ys = np.arange(low[0], high[0] + 1e-9, 0.02), np.arange(low[1], high[1] + 1e-9, 0.02)
        rings += [
            np.stack([np.full_like(ys, low[0]), ys], 1),
            np.stack([np.full_like(ys, high[0]), ys], 1),
            np.stack([xs, np.full_like(xs, low[1])], 1),
            np.stack([xs, np.full_like(xs, high[1])], 1),
        ]
    spots = np.concatenate(rings)
    # Everything else standing on the table or hanging over it, objects and fixtures alike (a spot beside the
    # drawer may lie in the cabinet itself), 1 cm around the footprint.
    others = _obstacles(state)
    support = place_box[2]  # the table's top
    blocked = _covered(spots, half + 0.01, others[others[:, 5] > support + 0.01]) > 0
    # Too near the base, the arm folds to its joints' limits to grasp at the table's height; too far, it cannot reach.
    reach = np.linalg.norm(spots - ROBOT_BASE_XY, axis=1)
    off_reach = np.maximum(COMFORT_REACH[0] - reach, 0.0) + np.maximum(reach - COMFORT_REACH[1], 0.0)
    score = 10.0 * blocked + 20.0 * off_reach + np.linalg.norm(spots - centre, axis=1)
    return spots[int(np.argmin(score))], float(support + 0.008)


def _free_spot(state: Mapping[str, np.ndarray], pick_box: np.ndarray, place_box: np.ndarray) -> np.ndarray:
    """Where to set the pick object's origin down (xy) on a target region it goes `On`: the middle; the region's
    near end when other objects of the goal go there too (the first pot on the stove); the point furthest from those
    already standing there (the second pot). Into a region it goes `In`: `_inside_spot`. The middle of any other
    target."""
    centre = (place_box[:2] + place_box[3:5]) / 2
    origin = np.asarray(state["pick_pos"][:2], np.float64)
    if state["place_is_region"][0] > 0.5 and state["place_inside"][0] > 0.5:
        return _inside_spot(state, pick_box, place_box) + (origin - (pick_box[:2] + pick_box[3:5]) / 2)
    if state["place_is_region"][0] < 0.5:
        return centre + (origin - (pick_box[:2] + pick_box[3:5]) / 2)
    boxes = np.asarray(state["obstacle_boxes"], np.float64)[np.asarray(state["obstacle_kind"]) == OBSTACLE_OBJECT]
    standing = boxes[
        np.all(boxes[:, :2] < place_box[3:5], axis=1)
        & np.all(boxes[:, 3:5] > place_box[:2], axis=1)
        & (boxes[:, 2] > place_box[2] - 0.02)
    ]
    low, high = pick_box[:2] - origin, pick_box[3:5] - origin  # the footprint around the origin
    inset = np.minimum(FREE_SPOT_INSET, (place_box[3:5] - place_box[:2]) / 2)
    if len(standing) == 0:
        if state["place_shared"][0] < 0.5:
            return centre + (origin - (pick_box[:2] + pick_box[3:5]) / 2)
        # The first of several objects for this region: to one end of the axis along which the region holds most of
        # them side by side, at its low end, leaving the rest of the region to the others.
        axis = int(np.argmax((place_box[3:5] - place_box[:2]) / (high - low)))
        spot = centre.copy()
        spot[axis] = place_box[axis] + inset[axis]
        return spot
    xs = np.linspace(place_box[0] + inset[0], place_box[3] - inset[0], 9)
    ys = np.linspace(place_box[1] + inset[1], place_box[4] - inset[1], 9)
    spots = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    # Gap between the footprint at each spot and each standing object (negative: they overlap).
    gap = np.maximum(
        standing[None, :, :2] - (spots[:, None] + high), (spots[:, None] + low) - standing[None, :, 3:5]
    ).max(-1)  # [spots, standing]
    score = gap.min(1) - 1e-3 * np.linalg.norm(spots - centre, axis=1)
    return spots[int(np.argmax(score))]


def _overhead(state: Mapping[str, np.ndarray]) -> np.ndarray:
    """World bounds of the fixture parts that hang over the region the pick object goes `In`, low enough for the
    object or the hand holding it to meet them (the cabinet above an open drawer's back half, a microwave's roof);
    none for an `On` target."""
    if state["place_is_region"][0] < 0.5 or state["place_inside"][0] < 0.5:
        return np.zeros((0, 6))
    pick_box = np.asarray(state["pick_box"], np.float64)
    place_box = np.asarray(state["place_box"], np.float64)
    kinds = np.asarray(state["obstacle_kind"])
    boxes = np.asarray(state["obstacle_boxes"], np.float64)[(kinds == OBSTACLE_FIXTURE) | (kinds == OBSTACLE_PLACE)]
    return boxes[
        np.all(boxes[:, :2] < place_box[3:5], axis=1)
        & np.all(boxes[:, 3:5] > place_box[:2], axis=1)
        & (boxes[:, 2] > place_box[2] + 0.02)
        & (boxes[:, 2] < place_box[2] + (pick_box[5] - pick_box[2]) + HAND_BOX[4])
    ]


def _inside_spot(state: Mapping[str, np.ndarray], pick_box: np.ndarray, place_box: np.ndarray) -> np.ndarray:
    """Where to put the pick object's box centre (xy) into a region it goes `In`: the middle, or, under an overhang
    (`_overhead`), the spot, of those that keep the footprint `INSIDE_MARGIN` inside the region, with the least of
    the footprint (1 cm around it) under the overhang, then the nearest the middle."""
    centre = (place_box[:2] + place_box[3:5]) / 2
    overhead = _overhead(state)
    if len(overhead) == 0:
        return centre
    half = (pick_box[3:5] - pick_box[:2]) / 2
    low, high = place_box[:2] + half + INSIDE_MARGIN, place_box[3:5] - half - INSIDE_MARGIN
    low, high = np.minimum(low, centre), np.maximum(high, centre)  # a region narrower than the object: its middle
    spots = np.stack(np.meshgrid(np.linspace(low[0], high[0], 9), np.linspace(low[1], high[1], 9)), -1).reshape(-1, 2)
    covered = _covered(spots, half + 0.01, overhead)
    return spots[int(np.argmin(covered + 1e-3 * np.linalg.norm(spots - centre, axis=1)))]


def _covered(spots: np.ndarray, half: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Area `[spots]` of a footprint (half sizes `half`, centred at each of `spots` `[S, 2]`) that the footprints of
    `boxes` (world bounds) cover, summed over the boxes."""
    sides = np.clip(
        np.minimum(spots[:, None] + half, boxes[None, :, 3:5]) - np.maximum(spots[:, None] - half, boxes[None, :, :2]),
        0.0,
        None,
    )  # [spots, boxes, 2]
    return (sides[..., 0] * sides[..., 1]).sum(1)


def _opening_up(state: Mapping[str, np.ndarray]) -> bool:
    # Finger joints move apart with opposite signs; the opening grows when qvel has the sign of qpos.
    qpos, qvel = np.asarray(state["gripper_qpos"]), np.asarray(state["gripper_qvel"])
    return float(np.sum(np.sign(qpos) * qvel)) > 0.0


def _fingers_opening(state: Mapping[str, np.ndarray]) -> bool:
    """Whether the fingers are moving apart, faster than the jitter of fingers at rest (0.02 in summed joint speed)."""
    return _opening_up(state) and float(np.abs(state["gripper_qvel"]).sum()) >= 0.02


def _pull_open(state: Mapping[str, np.ndarray], obstacles: np.ndarray) -> np.ndarray:
    """`Open` a drawer: the hand turns to point at the drawer's front with the fingers closing up and down, comes in
    level with the handle, closes on it and pulls along the slide."""
    eef = np.asarray(state["eef_pos"], np.float64)
    rot = np.asarray(state["eef_xmat"], np.float64).reshape(3, 3)
    handle = np.asarray(state["handle_box"], np.float64)
    centre = (handle[:3] + handle[3:]) / 2
    outward = np.asarray(state["joint_axis"], np.float64) * np.sign(state["joint_goal"][0] - state["joint_qpos"][0])
    level = _level_frame(-outward, rot, float(state["joint_pos"][6]))
    # Grip the bar near its front, clear of the drawer's face behind it.
    depth = float(np.abs(outward) @ (handle[3:] - handle[:3]))
    centre = centre + outward * (depth / 2 - PULL_GRIP_DEPTH)
    rel = eef - centre
    along = float(rel @ outward)
    lateral = rel - along * outward
    # Once on the way in, a turn the contact with the handle causes does not send the hand back out.
    entering = along > PULL_STANDOFF - 0.02
    turn_error = float(np.linalg.norm(_axis_angle(level @ rot.T)))
    turned = turn_error < (0.1 if entering else 0.35)
    lane = PULL_LANE / 2 if entering else PULL_LANE  # line up precisely before coming in
    opening = float(state["gripper_opening"][0])
    thickness = float(handle[5] - handle[2])
    touching = float(np.asarray(state["pick_contacts"]).sum()) > 0
    at_handle = np.linalg.norm(lateral) < PULL_LANE and along < 0.01
    climb = False  # whether the hand climbs before it flies on
    if at_handle and opening < thickness + 0.015 and touching:
        target, grip = eef + outward * 0.05 - lateral, CLOSE  # holding the handle: pull
    elif at_handle and (touching or opening > thickness + 0.01):
        target, grip = centre, CLOSE
    elif at_handle:
        target, grip = centre + outward * PULL_STANDOFF, OPEN  # closed on nothing: back out and come again
    elif np.linalg.norm(lateral) < lane and turned and along < PULL_STANDOFF + 0.02:
        # Level with the handle: in between the fingers, held only a little wider than the handle so that they
        # pass clear of the drawer above and below.
        target, grip = centre, CLOSE if opening > thickness + PULL_FINGER_GAP else OPEN
    else:
        if along > PULL_STANDOFF + 0.02 and _letting_go(state):
            return _LET_GO.copy()  # the object a `Clear` just set down out of the way
        target, grip = centre + outward * PULL_STANDOFF, OPEN
        if np.linalg.norm(target[:2] - eef[:2]) > NEAR_GRASP:
            # The level hand reaches HAND_BOX[1] below the grip site: fly that much higher over what stands in front
            # of the cabinet (a bowl it would sweep along to the handle).
            fly = _corridor_top(obstacles, eef[:2], target[:2], HAND_BOX[1]) + HAND_BOX[1] + CLEARANCE
            climb = rot[2, 2] < -0.9 and eef[2] < fly - 0.02  # still pointing down, as it let go of an object
            target[2] = max(target[2], fly if climb else min(fly, eef[2]))
    action = _move(eef, target, rot, level)
    if climb:
        # Below that height, the hand just let go of the object a `Clear` set down: climb out first, or the open
        # fingers drag the object along, and turn only then (turning fast at the table's height throws the hand
        # 20 cm towards the robot's base).
        action[:2] *= _climb_first(eef[2], fly)
        action[3:6] *= _climb_first(eef[2], fly)
    action[6] = grip
    return action.astype(np.float32)


_LET_GO = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, OPEN], np.float32)


def _letting_go(state: Mapping[str, np.ndarray]) -> bool:
    """Whether the fingers are, or still open after being, closed on what the last subgoal moved (they stand apart,
    touching no part of the joint the subgoal is about): the hand stays and opens them all the way before it
    leaves, or it carries the object off."""
    opening = float(state["gripper_opening"][0])
    still = float(np.abs(state["gripper_qvel"]).sum()) < 0.02
    touching = float(np.asarray(state["pick_contacts"]).sum()) > 0
    holding = CLOSED_ON_NOTHING < opening < LET_GO_OPENING and still and not touching
    return holding or (_fingers_opening(state) and opening < LET_GO_OPENING)


def _push_closed(state: Mapping[str, np.ndarray], obstacles: np.ndarray) -> np.ndarray:
    """`Close`: push the moving part's handle shut with the closed fingers: a drawer's front along its slide, a door's
    free edge along the arc it closes on. The hand comes down in front of the handle, then pushes."""
    eef = np.asarray(state["eef_pos"], np.float64)
    rot = np.asarray(state["eef_xmat"], np.float64).reshape(3, 3)
    handle = np.asarray(state["handle_box"], np.float64)
    axis = np.asarray(state["joint_axis"], np.float64)
    centre = (handle[:3] + handle[3:]) / 2
    closing = np.sign(float(state["joint_goal"][0] - state["joint_qpos"][0]))
    door = abs(axis[2]) > 0.7
    if door:
        # A door: the free edge moves along axis x radius.
        radius = centre - np.asarray(state["joint_anchor"], np.float64)
        direction = closing * np.cross(axis, radius)
    else:
        direction = closing * axis
    direction[2] = 0.0
    direction /= np.linalg.norm(direction) + 1e-12
    half_depth = np.abs(direction[:2]) @ ((handle[3:5] - handle[:2]) / 2)
    contact = centre - direction * half_depth  # the handle's face the fingers push on
    start = contact - direction * PUSH_STANDOFF
    start[2] = centre[2]
    if door:
        start = _door_push_start(state, start, direction)
    lateral = eef[:2] - start[:2] - ((eef[:2] - start[:2]) @ direction[:2]) * direction[:2]
    along = (eef - start) @ direction
    in_lane = np.linalg.norm(lateral) < PUSH_LANE and abs(eef[2] - start[2]) < PUSH_LANE and -0.02 < along < 0.12
    # Fingers down and leaning towards the push, so that the hand above them stays clear of what stands out of the
    # face above the handle (the next drawer's handle).
    approach = np.cos(PUSH_TILT) * np.array([0.0, 0.0, -1.0]) + np.sin(PUSH_TILT) * direction
    across = np.cross(direction, [0.0, 0.0, 1.0])
    if across @ rot[:, 0] < 0:
        across = -across
    tilted = np.stack([across, np.cross(approach, across), approach], axis=1)
    if door:
        # Nothing stands out above a door's handle: the fingers point straight down, at the yaw that leaves the wrist
        # nearest its rest. Leaning towards the push, near the robot's base, folded the arm to its limits (joints 4, 6
        # and 7) before the hand reached the door.
        tilted = _down_frame(across, rot, float(state["joint_pos"][6]))
    still_closed = float(state["gripper_opening"][0]) < LET_GO_OPENING and not _fingers_opening(state)
    if door and rot[2, 2] > -0.3 and still_closed:
        # The level hand has just carried an object in by its handle (a mug: the `In` holds as soon as the mug's
        # origin is over the region's edge, half of it still outside, its handle in the door's way): push it on
        # with the closed fingers until the hand's body would meet the opening's frame, set it down on the floor
        # it is carried a little above, then let go. Let go in the air, it tipped back out over the edge. Only the
        # hand that has not let go yet: pushing again on the way down left it pushing the frame, half turned.
        boxes = np.asarray(state["obstacle_boxes"], np.float64)
        held = np.asarray(state["obstacle_kind"]) == OBSTACLE_OBJECT
        held &= np.all(boxes[:, :3] < eef + 0.02, 1) & np.all(boxes[:, 3:] > eef - 0.02, 1)
        if held.any():
            pointing = np.array([rot[0, 2], rot[1, 2], 0.0]) / (np.linalg.norm(rot[:2, 2]) + 1e-12)
            action = np.zeros(7)
            action[6] = CLOSE
            others = np.asarray(state["obstacle_obbs"], np.float64)[_kept(state, exclude_pick=True) & ~held]
            box = boxes[int(np.argmax(held))]
            if not _level_hand_hits(eef + 0.01 * pointing, pointing, others, 0.0):
                action[:3] = SIDE_SPEED * pointing
                return action.astype(np.float32)
            if box[2] > _top_below(state, box) + 0.004:
                action[2] = -SIDE_SPEED
                return action.astype(np.float32)
    if door and rot[2, 2] > -np.cos(TILTED) and not _letting_go(state):
        # Level after carrying a mug in by its handle: turning down where it is straightened the arm.
        action = _turn_down_towards_base(eef, rot)
        action[6] = OPEN
        return action.astype(np.float32)
    if not in_lane and _letting_go(state):
        # The bowl the `In` just let into the drawer (the `In` holds while the bowl is still in the air): the hand
        # would carry it off, tilted, and it would jam the drawer.
        return _LET_GO.copy()
    if in_lane:
        target = eef + direction * 0.05
        target[:2] -= lateral
        target[2] = start[2]
        action = _move(eef, target, rot, tilted)
    else:
        # Fly over whatever lies between, come down at the start point, away from the handle; over a door too (its
        # boxes are the "pick" ones): a door swung open towards the robot stands between the hand and its push side.
        between = _obstacles(state, exclude_pick=False) if door else obstacles
        fly = max(_corridor_top(between, eef[:2], start[:2], HAND_BOX[1]) + FINGERTIP_BELOW + CLEARANCE, start[2])
        xy_error = float(np.linalg.norm(start[:2] - eef[:2]))
        z = _fly_height(xy_error, start[2], fly)
        action = _move(eef, np.array([start[0], start[1], z]), rot, tilted)
        if eef[2] < fly - 0.02 and xy_error > NEAR_GRASP:
            action[:2] *= _climb_first(eef[2], fly)
    action[6] = CLOSE
    return action.astype(np.float32)


def _door_push_start(state: Mapping[str, np.ndarray], start: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Where the hand starts pushing a door shut: in front of its handle, or, when that is nearer the robot's base
    than `DOOR_PUSH_REACH` (a door swung open towards the robot), in front of the door's face at the largest
    distance from the hinge that is not. The door turns the same way wherever it is pushed."""
    anchor = np.asarray(state["joint_anchor"], np.float64)
    radial = start - anchor
    radial[2] = 0.0
    along = radial @ direction
    radius = radial - along * direction  # from the hinge line to the push lane, across the push
    for fraction in np.linspace(1.0, 0.3, 15):
        point = anchor + fraction * radius + along * direction
        point[2] = float(state["handle_box"][5]) - 0.01
        if np.linalg.norm(point[:2] - ROBOT_BASE_XY) >= DOOR_PUSH_REACH:
            return point
    return point


def _turn_knob(state: Mapping[str, np.ndarray], obstacles: np.ndarray) -> np.ndarray:
    """`Turnon`: grip the knob's ridge over its axis, fingers across the ridge, then turn the hand about the axis."""
    handle = np.asarray(state["handle_box"], np.float64)
    anchor = np.asarray(state["joint_anchor"], np.float64)
    ridge = np.asarray(state["handle_axis"], np.float64)
    turn = float(state["joint_goal"][0] - state["joint_qpos"][0])
    site = np.array([anchor[0], anchor[1], max(handle[5] - 0.015, handle[2] + FINGERTIP_BELOW + 0.004)])
    across = np.array([-ridge[1], ridge[0], 0.0])
    eef = np.asarray(state["eef_pos"], np.float64)
    # The turning ridge pushes the fingers about and often touches only one pad: the hand holds the knob while the
    # fingers stay closed around it over the axis and touch it.
    holding = (
        float(state["gripper_opening"][0]) < KNOB_WIDTH + 0.015
        and float(np.asarray(state["pick_contacts"]).sum()) > 0
        and np.linalg.norm(eef[:2] - anchor[:2]) < 2 * GRASP_XY_TOL
    )
    if not holding:
        return _approach(state, site, across, KNOB_WIDTH, obstacles, turn=turn)
    rot = np.asarray(state["eef_xmat"], np.float64).reshape(3, 3)
    # The knob turns about its (vertical) axis with the hand: ask for the remaining turn as a yaw of the grip site.
    target_rot = _rotation(np.asarray(state["joint_axis"], np.float64) * np.clip(turn, -0.5, 0.5)) @ rot
    action = _move(eef, np.array([anchor[0], anchor[1], eef[2]]), rot, target_rot)
    action[6] = CLOSE
    return action.astype(np.float32)


def plan_actions(state: Mapping[str, np.ndarray], horizon: int) -> np.ndarray:
    """The next `horizon` expert actions `[horizon, 7]` from one state: an open-loop plan.

    The controller is rolled forward on a kinematic model of the end effector: each step moves the grip site by
    `OSC_RESPONSE * action * 0.05 m` and turns it by `OSC_RESPONSE * action * 0.5 rad` (world-frame axis-angle), and
    moves the gripper opening by `GRIPPER_SPEED` towards the commanded side. Closing fingers that reach the width of
    the planned grasp hold the object; a held object moves with the hand; opening the gripper releases it. Everything else is static. With `horizon == 1` this is
    exactly `expert_action(state)`.
    """
    sim = {key: np.array(value, copy=True) for key, value in state.items()}
    actions = []
    for _ in range(horizon):
        action = expert_action(sim)
        actions.append(action)
        step = OSC_RESPONSE * action[:3] * POS_SCALE
        grasped = is_grasped(sim)
        sim["eef_pos"] = sim["eef_pos"] + step
        rot = _rotation(OSC_RESPONSE * action[3:6] * ROT_SCALE) @ sim["eef_xmat"].reshape(3, 3)
        sim["eef_xmat"] = rot.ravel().astype(np.float32)
        opening = np.clip(sim["gripper_opening"] - GRIPPER_SPEED * action[6], 0.0, FINGER_OPEN_WIDTH)
        sim["gripper_opening"] = opening.astype(np.float32)
        sim["gripper_qpos"] = (np.array([0.5, -0.5]) * opening).astype(np.float32)
        sim["gripper_qvel"] = (np.array([-1.0, 1.0]) * action[6] * GRIPPER_SPEED).astype(np.float32)
        if grasped and action[6] == CLOSE:
            sim["pick_pos"] = sim["pick_pos"] + step
            sim["pick_box"] = sim["pick_box"] + np.tile(step, 2)
            kinds = sim["obstacle_kind"] == OBSTACLE_PICK
            sim["obstacle_boxes"] = np.where(
                kinds[:, None], sim["obstacle_boxes"] + np.tile(step, 2), sim["obstacle_boxes"]
            )
            moved = np.concatenate([step, np.zeros(4)])
            sim["obstacle_obbs"] = np.where(kinds[:, None], sim["obstacle_obbs"] + moved, sim["obstacle_obbs"])
        elif action[6] == CLOSE and sim["gripper_opening"][0] <= _grasp(sim)[2]:
            # The closing fingers reach the object's width: from here on it is held.
            sim["pick_contacts"] = np.ones_like(sim["pick_contacts"])
            sim["gripper_qvel"] = np.zeros_like(sim["gripper_qvel"])
        elif action[6] == OPEN:
            sim["pick_contacts"] = np.zeros_like(sim["pick_contacts"])
    return np.stack(actions).astype(np.float32)


def closed_loop_actions(chunk_states: Sequence[Mapping[str, np.ndarray]], horizon: int) -> np.ndarray:
    """The expert's labels `[horizon, 7]` for a chunk that was executed from `chunk_states[0]`.

    `chunk_states[k]` is the state the chunk's action `k` was executed in and `chunk_states[-1]` the state after its
    last executed action (`len(chunk_states) - 1` actions ran). Position `k` of an executed action gets
    `expert_action(chunk_states[k])`; positions the episode did not execute continue with the plan
    (`plan_actions`) from the last state reached.
    """
    executed = min(len(chunk_states) - 1, horizon)
    actions = [expert_action(state) for state in chunk_states[:executed]]
    if executed < horizon:
        actions.extend(plan_actions(chunk_states[executed], horizon - executed))
    return np.stack(actions).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------------
# The teacher / policy
# ------------------------------------------------------------------------------------------------------------------

CHUNK_TARGETS = ("lookahead", "closed_loop", "plan")


class ExpertQuery(NamedTuple):
    """One decision as the scripted expert scores it: the state it was taken in, and the states its executed chunk
    went through and the chunk it would execute itself from there (each `None` when the rollout did not record it)."""

    state: Mapping[str, np.ndarray]
    chunk_states: Sequence[Mapping[str, np.ndarray]] | None = None
    lookahead_actions: np.ndarray | None = None


class ScriptedLiberoExpert:
    """A privileged scripted expert for LIBERO with the policy contract of `trl_vla.policy`.

    As a controller, `action(privileged_state)` is a pure function of `info["privileged_state"]` (see
    `trl_vla.envs.libero_state`). As a teacher it scores a student's action tokens: per token, a discretised Gaussian
    around its own action in the student's *normalised* action space, so that KL(student || teacher) is well defined.

    Args:
        suite (`str`):
            LIBERO suite (`"libero_object"`, `"libero_spatial"`, ...); see `supported_tasks(suite)`.
        task_id (`int`, *optional*):
            Restrict the expert to one task. `None` accepts every supported task of the suite, read from the
            privileged state (rollout batches mix tasks of a suite).
        action_space (`ActionSpace`, *optional*):
            The student's action space (bins, token layout, chunk size). Defaults to OpenVLA's: 7-D, chunk 1, 256
            bins at the tail of Llama-2's vocabulary.
        norm_stats (`dict`, *optional*):
            The student's BOUNDS_Q99 statistics, either `{"action": {"q01", "q99", "mask"}}` or OpenVLA's
            `{unnorm_key: {"action": ...}}` (then `action_space.unnorm_key` picks one). Defaults to identity bounds
            (`q01 = -1`, `q99 = 1`, gripper not normalised): LIBERO's controller units are already in [-1, 1].
        sigma (`float`, *optional*, defaults to `0.05`):
            Standard deviation of the Gaussian over the six arm dimensions, in the robot's (controller) units, so that
            the teacher's tolerance means the same motion whatever the student's statistics; in the student's
            normalised space it is `sigma * 2 / (q99 - q01)` per dimension (with identity statistics the bin width is
            2/255, about 0.0078). A dimension whose statistics span a narrow range (rotations in a few
            demonstrations) thus gets a correspondingly wider distribution over its bins, instead of a teacher that
            demands a precision of a thousandth of a radian.
        gripper_sigma (`float`, *optional*, defaults to `0.02`):
            Standard deviation for the gripper dimension (a sharper, near one-hot distribution).
        min_prob (`float`, *optional*, defaults to `1e-6`):
            Probability floor mixed in uniformly, so that no bin has zero mass (a reverse KL against a teacher with
            empty bins would be infinite).
        chunk_targets (`str`, *optional*, defaults to `"closed_loop"`):
            What the teacher scores chunk position `k` of a student's decision against (students with
            `chunk_size > 1`):

            - `"lookahead"`: the `k`-th action of the chunk it would execute itself from the decision's state,
              simulated closed-loop in the student's environment and then undone (the observation's
              `lookahead_actions`, recorded by environments built with `lookahead_policy=expert_action`;
              `lookahead_policy` tells a trainer to build them so). Every position is the expert's own action at a
              state its own actions reached: the chunk a demonstration started at this state would hold, so the
              targets are consistent along the chunk and match what the student was SFT'd on.
            - `"closed_loop"`: its own action at the state the student's executed chunk actually reached at step
              `t + k` (the observation's `chunk_privileged_states`, recorded by environments built with
              `record_step_states=True`; `needs_step_states` tells a trainer to build them so). Positions the
              episode never executed (success or the step cap inside the chunk) fall back to the plan from the
              last state reached. Positions `k > 0` are corrections of the student's own earlier actions in the
              chunk, which the student cannot see when it decides.
            - `"plan"`: its open-loop plan from the decision's state (`plan_actions`), the analogue of a VLA teacher
              that predicts a chunk from one observation; positions 1.. come from a kinematic model of the arm.

            When the expert *acts* (`sample_actions`), it always plans: the states a chunk will reach are unknown.
    """

    def __init__(
        self,
        suite: str,
        task_id: int | None = None,
        action_space: ActionSpace | None = None,
        norm_stats: Mapping[str, Any] | None = None,
        sigma: float = 0.05,
        gripper_sigma: float = 0.02,
        min_prob: float = 1e-6,
        chunk_targets: str = "closed_loop",
    ):
        if suite not in SUPPORTED_TASKS:
            raise ValueError(
                f"ScriptedLiberoExpert does not support the suite {suite!r}; supported suites and tasks: "
                f"{ {name: list(ids) for name, ids in SUPPORTED_TASKS.items()} }."
            )
        if task_id is not None and task_id not in SUPPORTED_TASKS[suite]:
            raise ValueError(
                f"ScriptedLiberoExpert does not support task {task_id} of {suite}; supported: "
                f"{list(SUPPORTED_TASKS[suite])}."
            )
        if sigma <= 0 or gripper_sigma <= 0:
            raise ValueError(f"`sigma` and `gripper_sigma` must be positive, got {sigma} and {gripper_sigma}.")
        if not 0 <= min_prob < 1:
            raise ValueError(f"`min_prob` must be in [0, 1), got {min_prob}.")
        if chunk_targets not in CHUNK_TARGETS:
            raise ValueError(f"`chunk_targets` must be one of {list(CHUNK_TARGETS)}, got {chunk_targets!r}.")
        action_space = action_space if action_space is not None else ActionSpace(action_dim=7, chunk_size=1)
        if action_space.action_dim != 7:
            raise ValueError(
                f"ScriptedLiberoExpert acts in LIBERO's 7-D action space, but the given action space has "
                f"action_dim={action_space.action_dim}."
            )
        self.suite = suite
        self.suite_id = LIBERO_SUITES.index(suite)
        self.task_id = task_id
        self._action_space = action_space
        self.tokenizer = ActionTokenizer.from_action_space(action_space)
        if norm_stats is None:
            self.norm_stats = identity_norm_stats(7)
        elif "action" in norm_stats:
            self.norm_stats = dict(norm_stats)
        else:
            self.norm_stats = select_norm_stats(norm_stats, action_space.unnorm_key)[1]
        self.sigma = float(sigma)
        self.gripper_sigma = float(gripper_sigma)
        self.min_prob = float(min_prob)
        self.chunk_targets = chunk_targets

    @property
    def action_space(self) -> ActionSpace:
        """The student's action space the expert's distributions live in."""
        return self._action_space

    @property
    def needs_step_states(self) -> bool:
        """Whether scoring needs the states inside each executed chunk (`LiberoEnv(record_step_states=True)`)."""
        return self.chunk_targets == "closed_loop" and self._action_space.chunk_size > 1

    @property
    def lookahead_policy(self) -> Callable[[Mapping[str, np.ndarray]], np.ndarray] | None:
        """The policy an environment must simulate ahead of each decision for scoring (`LiberoEnv`'s
        `lookahead_policy`, run `action_space.chunk_size` steps), or `None` when scoring needs no lookahead."""
        if self.chunk_targets == "lookahead" and self._action_space.chunk_size > 1:
            return expert_action
        return None

    def check_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Raise a `ValueError` if the state is not from a task this expert supports."""
        missing = {"suite_id", "task_id", "eef_pos", "pick_box"} - set(state)
        if missing:
            raise ValueError(
                f"Not a LIBERO privileged state (missing {sorted(missing)}); pass `info['privileged_state']` from "
                "LiberoEnv, as produced by `trl_vla.envs.libero_state.extract_privileged_state`."
            )
        suite_id, task_id = int(state["suite_id"][0]), int(state["task_id"][0])
        suite = LIBERO_SUITES[suite_id] if 0 <= suite_id < len(LIBERO_SUITES) else "an unknown suite"
        if suite_id != self.suite_id or task_id not in SUPPORTED_TASKS[self.suite]:
            raise ValueError(
                f"The state is from task {task_id} of {suite}; this expert supports tasks "
                f"{list(SUPPORTED_TASKS[self.suite])} of {self.suite}."
            )
        if self.task_id is not None and task_id != self.task_id:
            raise ValueError(f"The state is from task {task_id}, but this expert was built for task {self.task_id}.")

    def action(self, privileged_state: Mapping[str, np.ndarray]) -> np.ndarray:
        """The expert's next action `(7,)` in LIBERO's controller units (closed-loop, memoryless)."""
        self.check_state(privileged_state)
        return expert_action(privileged_state)

    def plan(self, privileged_state: Mapping[str, np.ndarray]) -> np.ndarray:
        """The next `chunk_size` actions `[chunk_size, 7]` (see `plan_actions` for the open-loop model)."""
        self.check_state(privileged_state)
        return plan_actions(privileged_state, self._action_space.chunk_size)

    # -------------------------------------------------------------------------------------------- policy contract

    def build_inputs(
        self, observations: Sequence[Mapping[str, Any]], instructions: Sequence[str] | None = None
    ) -> list[ExpertQuery]:
        """The privileged states of a batch of observations, with the states inside their executed chunks when the
        rollout recorded them (instructions are not needed: the state names the task)."""
        queries = []
        for i, observation in enumerate(observations):
            if "privileged_state" not in observation:
                raise ValueError(
                    f"Observation {i} has no 'privileged_state' (keys: {sorted(observation)}); the scripted expert "
                    "needs LiberoEnv's privileged simulator state."
                )
            self.check_state(observation["privileged_state"])
            queries.append(
                ExpertQuery(
                    observation["privileged_state"],
                    observation.get("chunk_privileged_states"),
                    observation.get("lookahead_actions"),
                )
            )
        return queries

    def target_actions(self, inputs: Sequence[ExpertQuery], closed_loop: bool | None = None) -> np.ndarray:
        """The expert's target chunk for each decision of a batch, `[B, chunk_size, 7]`, in robot units: closed-loop
        labels (`chunk_targets`; `closed_loop=False` asks for the open-loop plan whatever they are)."""
        targets = "plan" if closed_loop is False else self.chunk_targets
        horizon = self._action_space.chunk_size
        if targets == "plan" or horizon == 1:
            return np.stack([plan_actions(query.state, horizon) for query in inputs])
        if targets == "lookahead":
            _require(
                inputs, "lookahead_actions", "lookahead chunk targets are the chunk the expert itself would execute from "
                "each decision state, which only environments built with `lookahead_policy=expert_action, "
                "lookahead_steps=chunk_size` simulate (the OPD trainer builds them so when the teacher has a "
                "`lookahead_policy`)", "`chunk_targets='closed_loop'` or `'plan'`",
            )  # fmt: skip
            return np.stack([np.asarray(query.lookahead_actions, np.float32)[:horizon] for query in inputs])
        _require(
            inputs, "chunk_states", "closed-loop chunk targets label each action at the state it was executed in, "
            "which only environments built with `record_step_states=True` record (the OPD trainer builds them so "
            "when `needs_step_states`)", "`chunk_targets='plan'`",
        )  # fmt: skip
        return np.stack([closed_loop_actions(query.chunk_states, horizon) for query in inputs])

    def action_logits(self, inputs: Sequence[ExpertQuery], action_token_ids: Any = None) -> torch.Tensor:
        """Log-probabilities `[B, A, n_bins]` (used as logits) of the student's action tokens under the expert.

        Per token, the mass of a Gaussian around the expert's normalised target action (`target_actions`) over the
        values that tokenize to each column (values beyond [-1, 1] clip to the end bins, as the tokenizer clips them),
        mixed with a uniform floor of `min_prob`. `action_token_ids` is ignored: the expert's tokens are independent
        given the states.
        """
        return self._logits(self.target_actions(inputs))

    def _logits(self, target_actions: np.ndarray) -> torch.Tensor:
        mean = normalize_actions(target_actions, self.norm_stats).astype(np.float64)  # [B, T, D]
        mean = mean.reshape(len(mean), -1)  # [B, A], chunk-major like the tokens
        sigma = np.tile(self._normalised_sigma(), self._action_space.chunk_size)  # [A]
        low, high = self._column_intervals()  # [n_bins] each
        mass = _normal_cdf((high - mean[..., None]) / sigma[:, None]) - _normal_cdf(
            (low - mean[..., None]) / sigma[:, None]
        )  # [B, A, n_bins]
        mass = (1.0 - self.min_prob) * mass / mass.sum(-1, keepdims=True) + self.min_prob / mass.shape[-1]
        return torch.from_numpy(np.log(mass)).float()

    def _normalised_sigma(self) -> np.ndarray:
        """`[7]` the Gaussian's standard deviation per dimension in the student's normalised space."""
        low, high, mask = action_bounds(self.norm_stats, 7)
        robot = np.array([self.sigma] * 6 + [self.gripper_sigma])
        return np.where(mask, robot * 2.0 / np.maximum(high - low, 1e-8), robot)

    def _column_intervals(self) -> tuple[np.ndarray, np.ndarray]:
        """For each column, the interval of normalised values the tokenizer maps to it (clipping included)."""
        tok = self.tokenizer
        edges = tok.bins
        # digitize index i in [1, n_bins] takes [edges[i-1], edges[i]); below -1 clips into index 1, 1 and above
        # into index n_bins.
        index_low = np.concatenate([[-np.inf], edges[1:-1], [edges[-1]]])
        index_high = np.concatenate([edges[1:-1], [edges[-1]], [np.inf]])
        representative = np.concatenate([tok.bin_centers, [tok.max_action]])
        columns = tok.token_ids_to_columns(torch.from_numpy(tok.encode(representative))).numpy()
        low, high = np.empty(tok.n_bins), np.empty(tok.n_bins)
        low[columns], high[columns] = index_low, index_high
        return low, high

    def sample_actions(
        self,
        inputs: Sequence[Mapping[str, np.ndarray]],
        temperature: float = 1.0,
        generator: Generators = None,
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Sample token ids `[B, A]`, their log-probs `[B, A]` and robot actions `[B, chunk_size, 7]` from the
        expert's distribution around its plan (`temperature=0`: the mode, the bin of the expert's own action)."""
        logits = self._logits(self.target_actions(inputs, closed_loop=False))
        columns, log_probs = sample_from_logits(logits, temperature, generator)
        token_ids = self.tokenizer.columns_to_token_ids(columns)
        normalised = self.tokenizer.decode(token_ids.numpy()).reshape(len(inputs), self._action_space.chunk_size, 7)
        return token_ids, log_probs, unnormalize_actions(normalised, self.norm_stats)

    def __repr__(self) -> str:
        task = "all supported tasks" if self.task_id is None else f"task {self.task_id}"
        return (
            f"ScriptedLiberoExpert({self.suite}, {task}, sigma={self.sigma}, chunk_size={self._action_space.chunk_size}, "
            f"chunk_targets={self.chunk_targets!r})"
        )


def _require(inputs: Sequence[ExpertQuery], field: str, why: str, instead: str) -> None:
    """Raise if a decision lacks what its chunk targets are computed from (`field` of its `ExpertQuery`)."""
    missing = [i for i, query in enumerate(inputs) if getattr(query, field) is None]
    if missing:
        observation_key = {"chunk_states": "chunk_privileged_states"}.get(field, field)
        raise ValueError(
            f"Decisions {missing[:5]} carry no `{observation_key}`: {why}. Pass such an environment pool, or build "
            f"the expert with {instead}."
        )


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return torch.special.ndtr(torch.from_numpy(x)).numpy()
