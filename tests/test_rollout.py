"""collect_rollouts, the simulator worker pool (parallelism, faults, timeouts, shutdown) and save_video, on the real
LIBERO simulator."""

import gc
import os
import signal

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from trl_vla import ActionTokenizer, sample_from_logits
from trl_vla.envs.libero import WAIT_ACTION, make_prompts
from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor, VLAPolicy
from trl_vla.rollout import EnvPool, RolloutBatch, collect_rollouts, save_video
from trl_vla.testing import make_tiny_openvla


torch.set_num_threads(1)
SUITE = "libero_object"
CHUNK = 8


class ImagePolicy:
    """The policy contract at its smallest: action-token logits from a fixed random projection of the image's mean
    colour, so that greedy decoding is a deterministic function of the observation. `on_call(n)` runs before the
    n-th decision (1-based), to inject faults mid-rollout."""

    def __init__(self, chunk_size: int = CHUNK, on_call=None):
        self.tokenizer = ActionTokenizer(vocab_size=32000)
        self._space = self.tokenizer.action_space(action_dim=7, chunk_size=chunk_size)
        self.weight = torch.randn(3, self._space.num_action_tokens * 256, generator=torch.Generator().manual_seed(0))
        self.on_call = on_call
        self.batch_sizes = []

    @property
    def action_space(self):
        return self._space

    def build_inputs(self, observations, instructions):
        return torch.stack([torch.from_numpy(obs["image"]).float().mean((0, 1)) / 255 for obs in observations])

    def action_logits(self, inputs, action_token_ids):
        return (inputs @ self.weight).view(len(inputs), self._space.num_action_tokens, 256) * 4

    def sample_actions(self, inputs, temperature=1.0, generator=None):
        self.batch_sizes.append(len(inputs))
        if self.on_call is not None:
            self.on_call(len(self.batch_sizes))
        columns, log_probs = sample_from_logits(self.action_logits(inputs, None), temperature, generator)
        token_ids = self.tokenizer.columns_to_token_ids(columns)
        actions = 0.5 * self.tokenizer.decode(token_ids).numpy().reshape(len(inputs), self._space.chunk_size, 7)
        return token_ids, log_probs, actions


@pytest.fixture(scope="module")
def pool():
    with EnvPool(num_workers=2, step_timeout=300) as pool:
        yield pool


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    path = make_tiny_openvla(str(tmp_path_factory.mktemp("tiny")), decoding="parallel", chunk_size=CHUNK, seed=0)
    return VLAPolicy(OpenVLAForActionPrediction.from_pretrained(path), OpenVLAProcessor.from_pretrained(path))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _put_object_in_basket(env):
    """Complete the task directly in MuJoCo: move the object to pick into the basket's region."""
    robosuite_env = env.sim_env.env
    joint = robosuite_env.objects_dict[robosuite_env.obj_of_interest[0]].joints[-1]
    target = robosuite_env.sim.data.get_site_xpos("basket_1_contain_region")
    qpos = robosuite_env.sim.data.get_joint_qpos(joint).copy()
    qpos[:3] = target + np.array([0.0, 0.0, 0.01])
    robosuite_env.sim.data.set_joint_qpos(joint, qpos)
    robosuite_env.sim.forward()


# ---------------------------------------------------------------------------------------------------------------
# In-process: layout of the trajectories, masks after termination
# ---------------------------------------------------------------------------------------------------------------


def test_trajectories_and_masks_after_termination():
    prompts = make_prompts(SUITE, task_ids=[0], init_state_ids=[0, 1])
    with EnvPool(num_workers=0, record_step_states=True) as envs:

        def succeed_during_second_decision(call):
            if call == 2:  # episode 0 runs first (one environment): its object lands in the basket now
                _put_object_in_basket(envs._local.env)

        policy = ImagePolicy(on_call=succeed_during_second_decision)
        batch = collect_rollouts(policy, envs, prompts, temperature=1.0, seed=0, max_episode_steps=20, progress=False)

    assert isinstance(batch, RolloutBatch) and batch.num_episodes == 2
    # Episode 0 succeeds after one step of its second chunk; episode 1 runs 8 + 8 + 4 steps up to the cap.
    assert batch.success.tolist() == [True, False] and batch.fault.tolist() == [False, False]
    assert batch.env_steps.tolist() == [9, 20]
    assert batch.mask.tolist() == [[True, True, False], [True, True, True]]
    assert batch.num_decisions().tolist() == [2, 3]
    assert batch.token_ids.shape == (2, 3, 7 * CHUNK) and batch.log_probs.shape == (2, 3, 7 * CHUNK)
    assert batch.actions.shape == (2, 3, CHUNK, 7)
    assert (batch.token_ids[0, 2] == 0).all() and (batch.log_probs[0, 2] == 0).all()  # padding after the end
    assert policy.batch_sizes == [1] * 5

    steps = batch.steps()
    assert steps["episode_index"].tolist() == [0, 0, 1, 1, 1] and steps["step_index"].tolist() == [0, 1, 0, 1, 2]
    assert steps["token_ids"].shape == steps["action_mask"].shape == (5, 7 * CHUNK) and steps["action_mask"].all()
    # Only the actions the simulator ran are marked executed: 1 of episode 0's second chunk, 4 of episode 1's third.
    assert batch.executed_actions.tolist() == [[8, 1, 0], [8, 8, 4]]
    assert steps["executed_mask"].sum(1).tolist() == [7 * CHUNK, 7, 7 * CHUNK, 7 * CHUNK, 4 * 7]
    assert steps["executed_mask"][1, :7].all() and not steps["executed_mask"][1, 7:].any()
    assert steps["instructions"] == ["pick up the alphabet soup and place it in the basket"] * 5
    first = steps["observations"][0]
    assert {"image", "proprio", "privileged_state"} <= set(first) and first["image"].dtype == np.uint8
    # Each decision carries the states its chunk went through: its own, then one after every executed action; the
    # last is the state of the next decision.
    chunk_states = [obs["chunk_privileged_states"] for obs in steps["observations"]]
    assert [len(c) for c in chunk_states] == [9, 2, 9, 9, 5]
    assert all(c[0] is obs["privileged_state"] for c, obs in zip(chunk_states, steps["observations"]))
    for k in (0, 2, 3):
        np.testing.assert_array_equal(
            chunk_states[k][-1]["eef_pos"], steps["observations"][k + 1]["privileged_state"]["eef_pos"]
        )
    assert chunk_states[1][-1]["success"][0] == 1.0 and chunk_states[0][-1]["success"][0] == 0.0
    # The stored log-probs are the policy's own under the sampling temperature: what a trainer recomputes.
    logits = policy.action_logits(policy.build_inputs(steps["observations"], steps["instructions"]), None)
    expected = torch.log_softmax(logits, -1).gather(-1, (steps["token_ids"] - 31744).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(steps["log_probs"], expected)

    assert batch.frames(0).shape == (3, 128, 128, 3)  # two decisions + the final observation
    stats = batch.stats()
    assert (stats["num_episodes"], stats["successes"], stats["faults"], stats["env_steps"]) == (2, 1, 0, 29)
    assert stats["decisions"] == 5 and stats["success_rate"] == 0.5 and stats["env_steps_per_second"] > 0


def test_sampling_with_one_generator_per_row():
    logits = torch.randn(3, 4, 16)
    generators = [torch.Generator().manual_seed(s) for s in (0, 1, 2)]
    columns, log_probs = sample_from_logits(logits, 1.0, generators)
    assert columns.shape == log_probs.shape == (3, 4)
    # A row's samples come from its own generator alone: the same row sampled alone, or in another batch, agrees.
    alone, _ = sample_from_logits(logits[1:2], 1.0, [torch.Generator().manual_seed(1)])
    other, _ = sample_from_logits(
        logits[[2, 1]], 1.0, [torch.Generator().manual_seed(5), torch.Generator().manual_seed(1)]
    )
    assert torch.equal(alone[0], columns[1]) and torch.equal(other[1], columns[1])
    expected = torch.log_softmax(logits, -1).gather(-1, columns.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(log_probs, expected)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        sample_from_logits(logits, 1.0, generators[:2])


def test_pool_commands_are_collected_once():
    with EnvPool(num_workers=0) as envs:
        with pytest.raises(RuntimeError, match=r"Environments \[0\] have no command to collect"):
            envs.collect([0])
        envs.submit({0: ("getattr", "task_id")})
        with pytest.raises(RuntimeError, match="whose reply was not collected"):
            envs.submit({0: ("getattr", "task_id")})
        assert envs.first_done([[0]]) == 0
        assert envs.collect([0])[0].value is None  # no environment built yet
        with pytest.raises(IndexError, match="out of range for a pool of 1"):
            envs.submit({1: ("getattr", "task_id")})


def test_prompt_validation():
    policy = ImagePolicy()
    with pytest.raises(ValueError, match="lack the columns \\['init_state_id'\\]"):
        import datasets

        collect_rollouts(
            policy, None, datasets.Dataset.from_dict({"suite": [SUITE], "task_id": [0], "instruction": ["x"]})
        )
    with pytest.raises(ValueError, match="No prompts"):
        collect_rollouts(policy, None, [])
    with pytest.raises(ValueError, match="must be >= 0"):
        EnvPool(num_workers=-1)


def test_save_video(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    save_video(frames, str(tmp_path / "clip.mp4"), fps=5)
    reader = imageio.get_reader(str(tmp_path / "clip.mp4"))
    assert reader.count_frames() == 5 and reader.get_data(0).shape == (64, 64, 3)
    observations = [{"image": f, "wrist_image": f} for f in frames]
    save_video(observations, str(tmp_path / "sub" / "both.mp4"))
    assert imageio.get_reader(str(tmp_path / "sub" / "both.mp4")).get_data(0).shape == (64, 128, 3)
    with pytest.raises(ValueError, match="uint8"):
        save_video(frames.astype(np.float32), str(tmp_path / "bad.mp4"))


# ---------------------------------------------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_batch_the_policy_and_match_in_process(pool, tiny_policy):
    prompts = make_prompts(SUITE, task_ids=[0, 1], init_state_ids=[0, 1])
    sizes = []
    sample = tiny_policy.sample_actions

    def counting(inputs, **kwargs):
        sizes.append(len(inputs["input_ids"]))
        return sample(inputs, **kwargs)

    tiny_policy.sample_actions = counting
    try:
        batch = collect_rollouts(
            tiny_policy, pool, prompts, seed=0, max_episode_steps=16, progress=False, pipeline=False
        )
        assert sizes == [2] * 4  # lockstep: one policy call per decision step for both environments
        sizes.clear()
        pipelined = collect_rollouts(tiny_policy, pool, prompts, seed=0, max_episode_steps=16, progress=False)
        assert sizes == [1] * 8  # one call per half (here one environment) while the other half steps
    finally:
        del tiny_policy.sample_actions
    # Every episode samples from its own random stream: the pipelined schedule samples what the lockstep one does
    # for the same seed (and the in-process pool too, below).
    torch.testing.assert_close(pipelined.token_ids, batch.token_ids, rtol=0, atol=0)
    assert not torch.equal(batch.token_ids[0], batch.token_ids[1])  # the streams differ between episodes
    assert batch.env_steps.tolist() == [16] * 4 and not batch.fault.any()
    assert sorted(pool.get_attr("task_id")) == [0, 1]  # one task per worker: no rebuilds
    # Where the workers' time went adds up to their share of the wall time.
    times = pipelined.phase_times
    assert sum(times.values()) == pytest.approx(2 * pipelined.wall_time, rel=0.02)
    assert times["physics"] > 0 and times["controller"] > 0 and times["render"] > 0 and times["ipc"] > 0
    assert times["reset"] > 0 and times["privileged_state"] > 0 and "idle" in times
    # The tiny OpenVLA's stored log-probs are what the trainer recomputes from the stored observations.
    steps = batch.steps()
    with torch.no_grad():
        inputs = tiny_policy.build_inputs(steps["observations"], steps["instructions"])
        logits = tiny_policy.action_logits(inputs, steps["token_ids"])
    columns = steps["token_ids"] - tiny_policy.action_space.first_token_id
    expected = torch.log_softmax(logits.float(), -1).gather(-1, columns.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(steps["log_probs"], expected, atol=1e-4, rtol=1e-4)

    # Greedy decisions that depend on the images: the workers reproduce an in-process run exactly.
    parallel = collect_rollouts(ImagePolicy(), pool, prompts, temperature=0.0, max_episode_steps=16, progress=False)
    with EnvPool(num_workers=0) as local:
        serial = collect_rollouts(ImagePolicy(), local, prompts, temperature=0.0, max_episode_steps=16, progress=False)
        sampled = collect_rollouts(tiny_policy, local, prompts, seed=0, max_episode_steps=16, progress=False)
    torch.testing.assert_close(parallel.token_ids, serial.token_ids)
    torch.testing.assert_close(sampled.token_ids, batch.token_ids, rtol=0, atol=0)
    for episode in range(4):
        np.testing.assert_array_equal(parallel.frames(episode), serial.frames(episode))


@pytest.mark.slow
def test_killed_worker_is_a_fault_and_the_pool_recovers(pool):
    prompts = make_prompts(SUITE, task_ids=[0], init_state_ids=[0, 1, 2, 3])
    victim = pool.worker_pids[0]
    restarts = pool.num_restarts

    def kill_worker_0(call):
        if call == 2:
            os.kill(victim, signal.SIGKILL)

    # Lockstep, so that call 2 is every environment's second decision whatever the machine's speed (pipelined, it
    # is whichever half finished first: worker 0's first chunk, or worker 1's reset).
    batch = collect_rollouts(
        ImagePolicy(on_call=kill_worker_0), pool, prompts, max_episode_steps=16, seed=0, progress=False, pipeline=False
    )
    assert batch.fault.sum() == 1 and pool.num_restarts == restarts + 1
    faulted = int(batch.fault.nonzero()[0, 0])
    assert "SIGKILL" in batch.fault_messages[faulted] and not batch.success[faulted]
    assert batch.env_steps[faulted] == 8  # its first chunk ran; the second died with the worker
    assert batch.executed_actions[faulted, :2].tolist() == [CHUNK, 0]
    others = [e for e in range(4) if e != faulted]
    assert batch.env_steps[others].tolist() == [16] * 3  # the restarted worker took over the queue
    assert victim not in pool.worker_pids and not _alive(victim)
    assert batch.stats()["faults"] == 1
    assert faulted not in batch.steps(include_faults=False)["episode_index"].tolist()


@pytest.mark.slow
def test_hung_worker_times_out(pool):
    prompts = make_prompts(SUITE, task_ids=[0], init_state_ids=[0, 1])
    collect_rollouts(ImagePolicy(), pool, prompts, max_episode_steps=8, progress=False)  # tasks built: fast resets
    frozen = pool.worker_pids[1]

    def freeze_worker_1(call):
        if call == 1:
            os.kill(frozen, signal.SIGSTOP)

    timeout, pool.step_timeout = pool.step_timeout, 15.0
    try:
        batch = collect_rollouts(
            ImagePolicy(on_call=freeze_worker_1), pool, prompts, max_episode_steps=8, progress=False
        )
    finally:
        pool.step_timeout = timeout
    assert batch.fault.sum() == 1 and "no reply within step_timeout=15 s" in batch.fault_messages[1]
    assert not _alive(frozen) and batch.env_steps.tolist() == [8, 0]


def _libero_env_that_freezes_while_replying(suite, task_id, **kwargs):
    """LiberoEnv whose step replies with 8 MB more than a pipe holds and whose process stops itself (SIGSTOP) a
    second later: frozen halfway through writing its reply when the parent is not reading it meanwhile."""
    import threading

    from trl_vla.envs.libero import LiberoEnv

    env = LiberoEnv(suite, task_id, **kwargs)
    step = env.step

    def step_then_freeze(action):
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGSTOP)).start()
        return step(action), np.zeros(8 << 20, np.uint8)

    env.step = step_then_freeze
    return env


@pytest.mark.slow
def test_worker_frozen_halfway_through_its_reply_times_out():
    import time as _time

    factory = _libero_env_that_freezes_while_replying
    with EnvPool(num_workers=1, image_size=32, env_factory=factory) as envs:
        assert not envs.run({0: ("reset", {"suite": SUITE, "task_id": 0, "init_state_id": 0})})[0].fault
        frozen, envs.step_timeout = envs.worker_pids[0], 5.0
        envs.submit({0: ("step", WAIT_ACTION)})
        _time.sleep(3.0)  # busy elsewhere (a policy's forward): the reply fills the pipe, then the worker stops
        start = _time.monotonic()
        reply = envs.collect([0])[0]
        assert reply.fault and reply.message.startswith("no reply within step_timeout=5 s")
        assert _time.monotonic() - start < 60 and envs.num_restarts == 1  # killed at 5 s, then a fresh worker starts
        assert not _alive(frozen) and envs.worker_pids[0] != frozen


@pytest.mark.slow
def test_closing_leaves_no_processes():
    with pytest.raises(KeyError):
        with EnvPool(num_workers=1) as envs:
            pids = envs.worker_pids
            raise KeyError("an error while rolling out")
    assert envs.closed and not any(_alive(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="closed"):
        envs.run({0: ("step", WAIT_ACTION)})

    envs = EnvPool(num_workers=1)
    pids = envs.worker_pids
    del envs
    gc.collect()
    assert not any(_alive(pid) for pid in pids)


STDIN_SCRIPT = """
from trl_vla.rollout import EnvPool
with EnvPool(num_workers=1, image_size=32) as envs:
    reply = envs.run({0: ("reset", {"suite": "libero_object", "task_id": 0, "init_state_id": 0})})[0]
    print("reset", reply.fault, reply.value[0]["image"].shape)
"""


@pytest.mark.slow
def test_pool_starts_from_a_script_read_on_stdin():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-"], input=STDIN_SCRIPT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "reset False (32, 32, 3)" in done.stdout

    # A factory defined in that script cannot reach the workers: one line says why and what to do.
    script = "from trl_vla.rollout import EnvPool\ndef make(**kw): pass\nEnvPool(num_workers=1, env_factory=make)\n"
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "RuntimeError: The env factory 'make' is defined in a script read from <stdin>" in done.stderr


def _noisy_libero_env(suite, task_id, **kwargs):
    """LiberoEnv, built after a Python print and a C-level write to stderr (what simulator libraries do)."""
    from trl_vla.envs.libero import LiberoEnv

    print("a print from the worker", flush=True)
    os.write(2, b"a C-level write to stderr\n")
    return LiberoEnv(suite, task_id, **kwargs)


@pytest.mark.slow
def test_worker_output_goes_to_its_log(tmp_path, capfd):
    with EnvPool(num_workers=1, image_size=32, log_dir=str(tmp_path / "logs"), env_factory=_noisy_libero_env) as envs:
        reply = envs.run({0: ("reset", {"suite": SUITE, "task_id": 0, "init_state_id": 0})})[0]
        assert not reply.fault
    out, err = capfd.readouterr()
    log = (tmp_path / "logs" / "worker-0.log").read_text()
    for line in ("a print from the worker", "a C-level write to stderr"):
        assert line in log and line not in out + err  # in the worker's log, not on the console
    # robosuite's import-time macro warning and LIBERO's print while building a suite are gone altogether.
    assert not any(noise in out + err + log for noise in ("No private macro file", "using task orders"))


@pytest.mark.slow
def test_video_episodes_have_a_frame_per_env_step(pool):
    prompts = make_prompts(SUITE, task_ids=[0], init_state_ids=[0, 1])
    batch = collect_rollouts(
        ImagePolicy(), pool, prompts, temperature=0.0, max_episode_steps=20, progress=False, video_episodes=[0]
    )
    steps = batch.env_steps.tolist()
    decisions = batch.mask.sum(1).tolist()
    assert batch.frames(0).shape[0] == steps[0] + 1  # the reset's frame, then one per env step
    assert batch.frames(1).shape[0] == decisions[1] + 1  # one per decision, then the final observation
    np.testing.assert_array_equal(batch.frames(0)[0], batch.observations[0][0]["image"])
    np.testing.assert_array_equal(batch.frames(0)[-1], batch.final_observations[0]["image"])
    assert batch.video_frames[1] is None


@pytest.mark.slow
def test_in_process_pool_times_out_a_hung_step():
    import time as _time

    with EnvPool(num_workers=0, image_size=32) as envs:
        reset = {"suite": SUITE, "task_id": 0, "init_state_id": 0}
        assert not envs.run({0: ("reset", reset)})[0].fault
        envs.step_timeout = 2.0
        envs._local.env.step = lambda action: _time.sleep(60)  # the simulator hangs
        start = _time.monotonic()
        reply = envs.run({0: ("step", WAIT_ACTION)})[0]
        assert reply.fault and reply.message == "no reply within step_timeout=2 s"
        assert _time.monotonic() - start < 10
        assert envs._local.env is None  # dropped: the next reset builds a fresh environment
        envs.step_timeout = 300.0
        assert not envs.run({0: ("reset", reset)})[0].fault
