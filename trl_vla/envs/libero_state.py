"""The privileged simulator state of a LIBERO scene, as a flat dict of numpy arrays.

`extract_privileged_state(env)` reads everything a scripted pick-and-place expert needs from the MuJoCo state of a
LIBERO environment, so that the expert (and anything that scores stored student trajectories with it) never needs the
simulator again. Every array has a fixed shape, independent of the task, so states of different tasks of a suite can
be stacked.

Keys (float32 unless noted; positions in metres, world frame; quaternions `xyzw` as in robosuite's observations):

| key | shape | meaning |
|---|---|---|
| `suite_id` | `(1,)` int64 | index of the suite in `LIBERO_SUITES`, `-1` if the BDDL file is not from a known suite |
| `task_id` | `(1,)` int64 | index of the task in its suite (`-1` if unknown) |
| `eef_pos` | `(3,)` | the grip site `gripper0_grip_site` (what robosuite's `robot0_eef_pos` reports, what OSC moves) |
| `eef_quat` | `(4,)` | robosuite's `robot0_eef_quat` (the hand body) |
| `eef_xmat` | `(9,)` | row-major rotation of the grip site (the frame OSC rotation deltas act on; fingers close along its x axis) |
| `gripper_qpos` | `(2,)` | the two finger joints |
| `gripper_qvel` | `(2,)` | finger joint velocities (their sign says whether the gripper is opening or closing) |
| `gripper_opening` | `(1,)` | sum of absolute finger joint positions (about 0.08 fully open, about 0 fully closed) |
| `joint_pos` | `(7,)` | arm joints |
| `subgoal_index` | `(1,)` int64 | the goal predicate the expert works on now (see below); the number of predicates once all hold |
| `subgoal_kind` | `(1,)` int64 | its kind: `SUBGOAL_ON`, `SUBGOAL_IN`, `SUBGOAL_OPEN`, `SUBGOAL_CLOSE`, `SUBGOAL_TURN_ON`, `SUBGOAL_CLEAR`, `-1` when all hold |
| `pick_pos`, `pick_quat`, `pick_xmat` | `(3,)`, `(4,)`, `(9,)` | body pose of the object the current subgoal moves (its first argument), or of the joint's moving body (the knob, the drawer) for an `Open` / `Close` / `Turnon` |
| `pick_box` | `(6,)` | axis-aligned world bounds `[min xyz, max xyz]` of the pick object's collision geoms |
| `pick_local_box` | `(6,)` | bounds of the same geoms in the pick object's body frame (its shape, independent of its pose) |
| `pick_parts` | `(MAX_PICK_PARTS, 6)` | bounds of each of those geoms in the same body frame (its handle, its walls); zero rows pad |
| `pick_contacts` | `(2,)` | 1.0 where the left / right finger (pad or body) touches the pick object |
| `place_pos`, `place_quat` | `(3,)`, `(4,)` | pose of the place target: a region site (`basket_1_contain_region`) or an object body (`plate_1`) |
| `place_box` | `(6,)` | world bounds of the target: the region site's box, or the target object's collision geoms; for a `Clear`, the box the object must leave |
| `place_is_region` | `(1,)` | 1.0 if the target is a region site (`basket_1_contain_region`), 0.0 for an object |
| `place_shared` | `(1,)` | how many other `On` / `In` predicates of the goal name the same target (two pots on one stove) |
| `place_inside` | `(1,)` | 1.0 if the current subgoal is `in` (put inside the target), 0.0 otherwise |
| `joint_qpos`, `joint_goal` | `(1,)`, `(1,)` | for an `Open` / `Close` / `Turnon` subgoal: the position of the joint it is about (a drawer's slide, a stove knob's hinge), and the middle of the range in which LIBERO's predicate holds; zeros otherwise |
| `joint_axis`, `joint_anchor` | `(3,)`, `(3,)` | that joint's world axis and anchor point (zeros otherwise) |
| `handle_box` | `(6,)` | world bounds of the moving part's handle: the geoms of the joint's body that reach furthest along the opening direction of a slide (a drawer's handle), along the axis of a knob (its ridge), or from the axis of another hinge (a door's free edge); zeros otherwise |
| `handle_axis` | `(3,)` | world direction of the handle's longest horizontal side (zeros otherwise) |
| `obstacle_boxes` | `(MAX_OBSTACLE_BOXES, 6)` | world bounds of every other collision box: one per movable object body, one per fixture geom (a cabinet is many boxes, so its drawers stay reachable) |
| `obstacle_obbs` | `(MAX_OBSTACLE_BOXES, 7)` | the same boxes, each as a box turned about the vertical: centre xyz, half sizes along its first and second horizontal axes and up, and the yaw of its first horizontal axis (world). A fixture geom whose box stands upright is itself (a turned cabinet's wall is 4 mm thick, where its world bounds are centimetres); a geom tilted otherwise, and a movable object's union of geoms, is its world bounds with yaw 0 |
| `obstacle_kind` | `(MAX_OBSTACLE_BOXES,)` int64 | `OBSTACLE_PICK`, `OBSTACLE_PLACE`, `OBSTACLE_OBJECT`, `OBSTACLE_FIXTURE`, or `-1` for padding |
| `success` | `(1,)` | 1.0 if the task's goal holds (every predicate of its conjunction) |

A LIBERO goal is a conjunction of predicates (`(On bowl plate)`, `(In soup basket_region)`, `(Open drawer_region)`,
`(Close microwave)`, `(Turnon stove)`). The *current subgoal* is read from the simulator, never remembered: the first
predicate, in the BDDL file's order, that does not hold, except that `Close` predicates wait until every other
predicate holds (a drawer is closed after the bowl went in), and that an `In` whose target is a shut drawer becomes
an `Open` of that drawer first, and that `Open` becomes a `Clear` of the object to put in while the object stands
where the opened drawer would hang over it (within `CLEAR_MARGIN` of its footprint) or is carried off the table:
`place_box` is then the box the object must leave. The `pick_*` / `place_*` keys describe it when it is an
`On` / `In` / `Clear`; a predicate that already held and broke again (an object knocked out of the basket) becomes current
again.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from .libero_setup import benchmark_suite


__all__ = [
    "CLEAR_MARGIN",
    "LIBERO_SUITES",
    "MAX_OBSTACLE_BOXES",
    "MAX_PICK_PARTS",
    "OBSTACLE_FIXTURE",
    "OBSTACLE_OBJECT",
    "OBSTACLE_PICK",
    "OBSTACLE_PLACE",
    "SUBGOAL_CLEAR",
    "SUBGOAL_CLOSE",
    "SUBGOAL_IN",
    "SUBGOAL_KINDS",
    "SUBGOAL_ON",
    "SUBGOAL_OPEN",
    "SUBGOAL_TURN_ON",
    "extract_privileged_state",
    "obbs_of_bounds",
    "task_of_bddl_file",
]

LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
"""Suites, in the order `suite_id` indexes them."""

MAX_OBSTACLE_BOXES = 128
"""Rows of `obstacle_boxes` (padded). The largest LIBERO spatial/object/goal scene needs about 70."""

OBSTACLE_PICK, OBSTACLE_PLACE, OBSTACLE_OBJECT, OBSTACLE_FIXTURE = 0, 1, 2, 3

MAX_PICK_PARTS = 64
"""Rows of `pick_parts` (padded with zeros; an object with more collision geoms keeps its first 64)."""

SUBGOAL_KINDS = ("on", "in", "open", "close", "turnon", "clear")
"""Subgoal kinds, in the order `subgoal_kind` indexes them: BDDL predicate names, and `clear` (move an object out of
the way of a drawer about to open; not a BDDL predicate)."""
SUBGOAL_ON, SUBGOAL_IN, SUBGOAL_OPEN, SUBGOAL_CLOSE, SUBGOAL_TURN_ON, SUBGOAL_CLEAR = range(len(SUBGOAL_KINDS))

_BDDL_KINDS = SUBGOAL_KINDS[:SUBGOAL_CLEAR]

CLEAR_MARGIN = 0.03
"""How far (m, horizontally) an object must stand off the footprint of a drawer opened for it before the drawer opens:
the room the hand that grasps it afterwards needs beside it."""


@functools.cache
def _bddl_index() -> dict[tuple[str, str], int]:
    index = {}
    for suite in LIBERO_SUITES:
        task_suite = benchmark_suite(suite)
        for task_id in range(task_suite.n_tasks):
            index[(suite, task_suite.get_task(task_id).bddl_file)] = task_id
    return index


def task_of_bddl_file(bddl_file_name: str) -> tuple[int, int]:
    """`(suite_id, task_id)` of a LIBERO BDDL file path (`(-1, -1)` for a file outside the known suites)."""
    suite = os.path.basename(os.path.dirname(bddl_file_name))
    task_id = _bddl_index().get((suite, os.path.basename(bddl_file_name)), -1)
    if task_id < 0:
        return -1, -1
    return LIBERO_SUITES.index(suite), task_id


def _robosuite_env(env: Any) -> Any:
    # OffScreenRenderEnv / ControlEnv keep the robosuite environment in `.env`; accept any wrapper chain.
    for _ in range(8):
        if hasattr(env, "sim") and hasattr(env, "obj_body_id"):
            return env
        if not hasattr(env, "env"):
            break
        env = env.env
    raise TypeError(
        "extract_privileged_state expects a LIBERO environment (libero.libero.envs OffScreenRenderEnv/ControlEnv, "
        f"or their robosuite `.env`), got {type(env).__name__}."
    )


def _xyzw(wxyz: np.ndarray) -> np.ndarray:
    return np.asarray([wxyz[1], wxyz[2], wxyz[3], wxyz[0]], np.float32)


def _body_subtree(model: Any, root: int) -> set[int]:
    bodies = {root}
    for body in range(root + 1, model.nbody):
        if model.body_parentid[body] in bodies:
            bodies.add(body)
    return bodies


def _pick_state(model: Any, data: Any, body: int | None) -> dict[str, np.ndarray]:
    """`pick_*`: the pose, boxes and finger contacts of the object to pick (zeros when the goal names none)."""
    if body is None:
        return {
            "pick_pos": np.zeros(3, np.float32),
            "pick_quat": np.array([0, 0, 0, 1], np.float32),
            "pick_xmat": np.eye(3, dtype=np.float32).ravel(),
            "pick_box": np.zeros(6, np.float32),
            "pick_local_box": np.zeros(6, np.float32),
            "pick_parts": np.zeros((MAX_PICK_PARTS, 6), np.float32),
            "pick_contacts": np.zeros(2, np.float32),
        }
    geoms = _collision_geoms(model, _body_subtree(model, body))
    contacts = np.zeros(2, np.float32)
    if geoms:
        pick_set = set(geoms)
        fingers = _finger_bodies(model)
        for i in range(data.ncon):
            g1, g2 = data.contact[i].geom1, data.contact[i].geom2
            other = g2 if g1 in pick_set else g1 if g2 in pick_set else None
            if other is None:
                continue
            for side, finger in enumerate(fingers):
                if model.geom_bodyid[other] in finger:
                    contacts[side] = 1.0
    parts = np.zeros((MAX_PICK_PARTS, 6), np.float32)
    for row, geom in enumerate(geoms[:MAX_PICK_PARTS]):
        parts[row] = _local_aabb(model, data, body, [geom])
    return {
        "pick_pos": np.asarray(data.xpos[body], np.float32),
        "pick_quat": _xyzw(data.xquat[body]),
        "pick_xmat": np.asarray(data.xmat[body], np.float32),
        "pick_box": _geom_aabb(model, data, geoms),
        "pick_local_box": _local_aabb(model, data, body, geoms),
        "pick_parts": parts,
        "pick_contacts": contacts,
    }


def _place_state(
    model: Any, data: Any, place_name: str | None, bodies: dict[str, int]
) -> tuple[int | None, dict[str, np.ndarray]]:
    """`place_*`: the target object's pose and box, or a region site's; and the target's body (`None` for a site)."""
    import mujoco

    place_body = None
    state: dict[str, np.ndarray] = {}
    place_site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, place_name) if place_name else -1
    if place_name is not None and place_name in bodies:
        place_body = bodies[place_name]
        state["place_pos"] = np.asarray(data.xpos[place_body], np.float32)
        state["place_quat"] = _xyzw(data.xquat[place_body])
        state["place_box"] = _geom_aabb(model, data, _collision_geoms(model, _body_subtree(model, place_body)))
        state["place_is_region"] = np.zeros(1, np.float32)
    elif place_site >= 0:
        rot = data.site_xmat[place_site].reshape(3, 3)
        half = np.abs(rot) @ model.site_size[place_site]
        centre = data.site_xpos[place_site]
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, data.site_xmat[place_site])
        state["place_pos"] = np.asarray(centre, np.float32)
        state["place_quat"] = _xyzw(quat)
        state["place_box"] = np.concatenate([centre - half, centre + half]).astype(np.float32)
        state["place_is_region"] = np.ones(1, np.float32)
    else:
        state.update(
            place_pos=np.zeros(3, np.float32),
            place_quat=np.array([0, 0, 0, 1], np.float32),
            place_box=np.zeros(6, np.float32),
            place_is_region=np.zeros(1, np.float32),
        )
    return place_body, state


def _obstacles(
    model: Any,
    data: Any,
    object_bodies: dict[str, int],
    fixture_bodies: dict[str, int],
    pick_name: str | None,
    place_owner: str | None,
    moving_body: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`obstacle_boxes`, `obstacle_obbs` and `obstacle_kind`: one box per object body and one per fixture geom,
    padded. The geoms of `moving_body` (the part an articulation subgoal moves) are `OBSTACLE_PICK`."""
    moving = _body_subtree(model, moving_body) if moving_body is not None else set()
    boxes = np.zeros((MAX_OBSTACLE_BOXES, 6), np.float32)
    obbs = np.zeros((MAX_OBSTACLE_BOXES, 7), np.float32)
    kinds = np.full(MAX_OBSTACLE_BOXES, -1, np.int64)
    rows = []
    for name, body in object_bodies.items():
        geoms = _collision_geoms(model, _body_subtree(model, body))
        if not geoms:
            continue
        kind = OBSTACLE_PICK if name == pick_name else OBSTACLE_PLACE if name == place_owner else OBSTACLE_OBJECT
        box = _geom_aabb(model, data, geoms)
        rows.append((box, obbs_of_bounds(box), kind))
    for name, body in fixture_bodies.items():
        kind = OBSTACLE_PLACE if name == place_owner else OBSTACLE_FIXTURE
        for geom in _collision_geoms(model, _body_subtree(model, body)):
            box = _geom_aabb(model, data, [geom])
            rows.append(
                (
                    box,
                    _upright_obb(model, data, geom, box),
                    OBSTACLE_PICK if model.geom_bodyid[geom] in moving else kind,
                )
            )
    if len(rows) > MAX_OBSTACLE_BOXES:
        raise ValueError(
            f"The scene has {len(rows)} obstacle boxes, more than MAX_OBSTACLE_BOXES={MAX_OBSTACLE_BOXES}."
        )
    for row, (box, obb, kind) in enumerate(rows):
        boxes[row], obbs[row], kinds[row] = box, obb, kind
    return boxes, obbs, kinds


def obbs_of_bounds(boxes: np.ndarray) -> np.ndarray:
    """`obstacle_obbs` rows `[..., 7]` (yaw 0) of world bounds `[..., 6]` (`[min xyz, max xyz]`)."""
    boxes = np.asarray(boxes)
    centre, half = (boxes[..., :3] + boxes[..., 3:]) / 2, (boxes[..., 3:] - boxes[..., :3]) / 2
    return np.concatenate([centre, half, np.zeros_like(boxes[..., :1])], axis=-1)


def _upright_obb(model: Any, data: Any, geom: int, box: np.ndarray) -> np.ndarray:
    """The `obstacle_obbs` row of a box geom with one axis vertical; the world bounds `box` of any other geom."""
    import mujoco

    rot = np.asarray(data.geom_xmat[geom]).reshape(3, 3)
    up = int(np.argmax(np.abs(rot[2])))
    if model.geom_type[geom] != mujoco.mjtGeom.mjGEOM_BOX or abs(rot[2, up]) < 0.999:
        return obbs_of_bounds(box)
    first = next(i for i in range(3) if i != up)
    yaw = np.arctan2(rot[1, first], rot[0, first])
    # Half extents along the yaw's two horizontal axes and up: the box's own sizes, and a little more for the
    # slight tilt that is left, so that the box stays inside.
    axes = np.array([[np.cos(yaw), np.sin(yaw), 0.0], [-np.sin(yaw), np.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
    half = np.abs(axes @ rot) @ model.geom_size[geom]
    return np.concatenate([data.geom_xpos[geom], half, [yaw]]).astype(np.float32)


def _current_subgoal(robot_env: Any, holds: list[bool]) -> tuple[int, list[str]]:
    """`(index, predicate)` of the goal predicate to work on now (see the module docstring), given whether each goal
    predicate holds; `(n, [])` when all hold. A predicate of an unknown kind is skipped (it never becomes current)."""
    goal = robot_env.parsed_problem["goal_state"]
    order = [i for i, p in enumerate(goal) if p[0].lower() != "close"] + [
        i for i, p in enumerate(goal) if p[0].lower() == "close"
    ]
    for i in order:
        kind = goal[i][0].lower()
        if kind in _BDDL_KINDS and not holds[i]:
            target = goal[i][2] if len(goal[i]) == 3 else None
            site = robot_env.object_sites_dict.get(target) if kind == "in" else None
            if site is not None and site.joints and not robot_env.object_states_dict[target].is_open():
                return i, ["open", target]  # the drawer to put something in is shut: open it first
            return i, [kind, *goal[i][1:]]
    return len(goal), []


_ARTICULATION_RANGES = {
    "open": "default_open_ranges",
    "close": "default_close_ranges",
    "turnon": "default_turnon_ranges",
}


def _articulation(
    robot_env: Any, model: Any, data: Any, subgoal: list[str]
) -> tuple[int | None, dict[str, np.ndarray]]:
    """The joint an `Open` / `Close` / `Turnon` subgoal is about: its moving body and the `joint_*` / `handle_*` keys
    (zeros and `None` for any other subgoal)."""
    state = {
        "joint_qpos": np.zeros(1, np.float32),
        "joint_goal": np.zeros(1, np.float32),
        "joint_axis": np.zeros(3, np.float32),
        "joint_anchor": np.zeros(3, np.float32),
        "handle_box": np.zeros(6, np.float32),
        "handle_axis": np.zeros(3, np.float32),
    }
    if not subgoal or subgoal[0] not in _ARTICULATION_RANGES:
        return None, state
    name = subgoal[1]
    if name in robot_env.object_sites_dict:
        site = robot_env.object_sites_dict[name]
        joints, owner = site.joints, robot_env.get_object(site.parent_name)
    else:
        owner = robot_env.get_object(name)
        joints = owner.joints
    if not joints:
        raise ValueError(f"The subgoal {subgoal} names {name!r}, which has no joint to {subgoal[0]}.")
    joint = model.joint(joints[0]).id
    body = int(model.jnt_bodyid[joint])
    qpos = float(data.qpos[model.jnt_qposadr[joint]])
    goal = float(np.mean(owner.object_properties["articulation"][_ARTICULATION_RANGES[subgoal[0]]]))
    axis = np.asarray(data.xaxis[joint], np.float64)
    anchor = np.asarray(data.xanchor[joint], np.float64)
    geoms = _collision_geoms(model, {body})
    reach = np.array([_geom_aabb(model, data, [g]) for g in geoms])
    if model.jnt_type[joint] == _slide_joint():
        # A slide's handle sits on the face that moves out as it opens.
        ranges = owner.object_properties["articulation"]
        outward = axis * np.sign(np.mean(ranges["default_open_ranges"]) - np.mean(ranges["default_close_ranges"]))
        far = np.maximum(reach[:, :3] * outward, reach[:, 3:] * outward).sum(1)
    elif subgoal[0] == "turnon":
        # A knob's ridge stands out along its axis.
        far = np.maximum(reach[:, :3] * axis, reach[:, 3:] * axis).sum(1)
    else:
        # A door's free edge lies furthest from its hinge.
        radial = (reach[:, :3] + reach[:, 3:]) / 2 - anchor
        far = np.linalg.norm(radial - np.outer(radial @ axis, axis), axis=1)
    handle = [g for g, f in zip(geoms, far) if f > far.max() - 0.02]
    box = _geom_aabb(model, data, handle)
    local = _local_aabb(model, data, body, handle)
    rot = np.asarray(data.xmat[body]).reshape(3, 3)
    horizontal = [i for i in range(3) if abs(rot[2, i]) < 0.7]
    longest = max(horizontal, key=lambda i: local[3 + i] - local[i])
    state.update(
        joint_qpos=np.array([qpos], np.float32),
        joint_goal=np.array([goal], np.float32),
        joint_axis=axis.astype(np.float32),
        joint_anchor=anchor.astype(np.float32),
        handle_box=box,
        handle_axis=rot[:, longest].astype(np.float32),
    )
    return body, state


def _clear_subgoal(
    robot_env: Any,
    model: Any,
    data: Any,
    goal: list[str],
    body: int,
    joint: dict[str, np.ndarray],
    object_bodies: dict[str, int],
) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """For the `Open` of a drawer (its moving `body`, its `joint_*` keys `joint`) that the goal predicate `goal`, an
    `In`, puts its object into: the box the object must leave first (`place_box` of a `Clear`: the drawer's
    footprint once open, `CLEAR_MARGIN` wider, from the table's top to the drawer's bottom) and the object's
    `pick_*` keys; `None` when the object stands on the table clear of that box."""
    geoms = _collision_geoms(model, _body_subtree(model, body))
    shift = joint["joint_axis"] * (joint["joint_goal"][0] - joint["joint_qpos"][0])
    drawer = _geom_aabb(model, data, geoms) + np.tile(shift, 2)
    pick = _pick_state(model, data, object_bodies[goal[1]])
    box = pick["pick_box"]
    table = float(robot_env.workspace_offset[2])
    keep_out = np.concatenate([drawer[:2] - CLEAR_MARGIN, [table], drawer[3:5] + CLEAR_MARGIN, [drawer[2]]])
    overlaps = np.all(box[:2] < keep_out[3:5]) and np.all(box[3:5] > keep_out[:2]) and box[2] < keep_out[5]
    # Off the table with a finger on it, the object is being carried out of the way: not there yet.
    carried = pick["pick_contacts"].any() and box[2] > table + 0.01
    return (keep_out.astype(np.float32), pick) if overlaps or carried else None


def _slide_joint() -> int:
    import mujoco

    return int(mujoco.mjtJoint.mjJNT_SLIDE)


def _shared_targets(robot_env: Any, subgoal_index: int, place_name: str | None) -> int:
    goal = robot_env.parsed_problem["goal_state"]
    return sum(
        1
        for i, p in enumerate(goal)
        if i != subgoal_index
        and place_name is not None
        and len(p) == 3
        and p[0].lower() in ("on", "in")
        and p[2] == place_name
    )


def _collision_geoms(model: Any, bodies: set[int]) -> list[int]:
    return [
        g
        for g in range(model.ngeom)
        if model.geom_bodyid[g] in bodies and (model.geom_contype[g] or model.geom_conaffinity[g])
    ]


def _geom_aabb(model: Any, data: Any, geoms: list[int]) -> np.ndarray:
    """World axis-aligned bounds `[min xyz, max xyz]` of the union of the geoms' (oriented) boxes."""
    lows, highs = [], []
    for g in geoms:
        rot = data.geom_xmat[g].reshape(3, 3)
        half = np.abs(rot) @ _half_size(model, g)
        lows.append(data.geom_xpos[g] - half)
        highs.append(data.geom_xpos[g] + half)
    return np.concatenate([np.min(lows, 0), np.max(highs, 0)]).astype(np.float32)


def _half_size(model: Any, geom: int) -> np.ndarray:
    import mujoco

    size = model.geom_size[geom]
    kind = model.geom_type[geom]
    if kind == mujoco.mjtGeom.mjGEOM_SPHERE:
        return np.full(3, size[0])
    if kind in (mujoco.mjtGeom.mjGEOM_CYLINDER, mujoco.mjtGeom.mjGEOM_CAPSULE):
        cap = size[0] if kind == mujoco.mjtGeom.mjGEOM_CAPSULE else 0.0
        return np.array([size[0], size[0], size[1] + cap])
    if kind == mujoco.mjtGeom.mjGEOM_MESH:
        return model.geom_rbound[geom] * np.ones(3)
    return np.asarray(size[:3], np.float64)


def _local_aabb(model: Any, data: Any, body: int, geoms: list[int]) -> np.ndarray:
    world = np.asarray(data.xmat[body]).reshape(3, 3)
    origin = data.xpos[body]
    lows, highs = [], []
    for g in geoms:
        rot = world.T @ data.geom_xmat[g].reshape(3, 3)
        centre = world.T @ (data.geom_xpos[g] - origin)
        half = np.abs(rot) @ _half_size(model, g)
        lows.append(centre - half)
        highs.append(centre + half)
    return np.concatenate([np.min(lows, 0), np.max(highs, 0)]).astype(np.float32)


def _finger_bodies(model: Any) -> tuple[set[int], set[int]]:
    import mujoco

    fingers = []
    for name in ("gripper0_leftfinger", "gripper0_rightfinger"):
        body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
        if body < 0:
            raise ValueError(f"The robot has no body {name!r}; only LIBERO's Panda gripper is supported.")
        fingers.append(_body_subtree(model, body))
    return fingers[0], fingers[1]


def extract_privileged_state(env: Any) -> dict[str, np.ndarray]:
    """Read the privileged state of a LIBERO scene (see the module docstring for every key).

    Args:
        env: A LIBERO environment (`OffScreenRenderEnv` / `ControlEnv` from `libero.libero.envs`) or its robosuite
            environment (`env.env`).

    Returns:
        A flat dict of numpy arrays with fixed shapes.
    """
    import mujoco

    robot_env = _robosuite_env(env)
    model, data = robot_env.sim.model._model, robot_env.sim.data._data
    # Each goal predicate is evaluated once per state: for the current subgoal and for `success` (LIBERO's
    # `_check_success` is their conjunction).
    holds = [bool(robot_env._eval_predicate(p)) for p in robot_env.parsed_problem["goal_state"]]
    subgoal_index, subgoal = _current_subgoal(robot_env, holds)
    object_bodies = {name: robot_env.obj_body_id[name] for name in robot_env.objects_dict}
    fixture_bodies = {name: robot_env.obj_body_id[name] for name in robot_env.fixtures_dict}
    moving_body, joint_state = _articulation(robot_env, model, data, subgoal)
    clear = None
    if subgoal and subgoal[0] == "open":
        goal = robot_env.parsed_problem["goal_state"][subgoal_index]
        if goal[0].lower() == "in" and goal[1] in object_bodies:
            clear = _clear_subgoal(robot_env, model, data, goal, moving_body, joint_state, object_bodies)
    if clear is not None:
        subgoal = ["clear", goal[1]]
        moving_body, joint_state = _articulation(robot_env, model, data, subgoal)
    kind = SUBGOAL_KINDS.index(subgoal[0]) if subgoal else -1
    if kind in (SUBGOAL_ON, SUBGOAL_IN):
        pick_name, place_name = subgoal[1], subgoal[2]
    elif kind == SUBGOAL_CLEAR:
        pick_name, place_name = subgoal[1], None
    else:
        pick_name, place_name = None, None

    suite_id, task_id = task_of_bddl_file(robot_env.bddl_file_name)
    grip_site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "gripper0_grip_site")
    robot = robot_env.robots[0]
    gripper_joints = [model.joint(j).id for j in robot.gripper.joints]
    gripper_qpos = np.asarray([data.qpos[model.jnt_qposadr[j]] for j in gripper_joints])
    gripper_qvel = np.asarray([data.qvel[model.jnt_dofadr[j]] for j in gripper_joints])
    hand = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, robot.robot_model.eef_name)

    state = {
        "suite_id": np.array([suite_id], np.int64),
        "task_id": np.array([task_id], np.int64),
        "eef_pos": np.asarray(data.site_xpos[grip_site], np.float32),
        "eef_quat": _xyzw(data.xquat[hand]),
        "eef_xmat": np.asarray(data.site_xmat[grip_site], np.float32),
        "gripper_qpos": gripper_qpos.astype(np.float32),
        "gripper_qvel": gripper_qvel.astype(np.float32),
        "gripper_opening": np.array([np.abs(gripper_qpos).sum()], np.float32),
        "joint_pos": np.asarray(data.qpos[robot._ref_joint_pos_indexes], np.float32),
        "success": np.array([float(all(holds))], np.float32),
        "subgoal_index": np.array([subgoal_index], np.int64),
        "subgoal_kind": np.array([kind], np.int64),
        "place_inside": np.array([float(kind == SUBGOAL_IN)], np.float32),
        "place_shared": np.array([_shared_targets(robot_env, subgoal_index, place_name)], np.float32),
    }

    pick_body = object_bodies.get(pick_name) if pick_name is not None else None
    state.update(joint_state)
    if clear is not None:
        state.update(clear[1])
    else:
        state.update(_pick_state(model, data, pick_body if moving_body is None else moving_body))

    place_body, place_state = _place_state(model, data, place_name, object_bodies | fixture_bodies)
    if clear is not None:
        keep_out = clear[0]
        centre = (keep_out[:3] + keep_out[3:]) / 2
        place_state.update(place_pos=centre, place_box=keep_out, place_is_region=np.ones(1, np.float32))
    state.update(place_state)

    # The region's owner (the basket for `basket_1_contain_region`) is the place target for collision purposes.
    place_owner = place_name
    if place_body is None and place_name is not None:
        place_owner = next(
            (name for name in object_bodies | fixture_bodies if place_name.startswith(name + "_")), None
        )

    state["obstacle_boxes"], state["obstacle_obbs"], state["obstacle_kind"] = _obstacles(
        model, data, object_bodies, fixture_bodies, pick_name, place_owner, moving_body
    )
    return state
