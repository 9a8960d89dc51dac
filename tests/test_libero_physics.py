"""LiberoEnv's physics substeps (one MuJoCo forward pass each) against robosuite's own, on the real simulator."""

import numpy as np
import pytest
import torch

from trl_vla.envs.libero import LiberoEnv


torch.set_num_threads(1)


@pytest.mark.slow
def test_one_forward_pass_per_substep_is_bit_identical_to_robosuite_substeps():
    """LiberoEnv's substeps (one MuJoCo forward pass, then `mj_step2`) against robosuite's own (forward, the
    controller's forward, `mj_step`), through a knob turn that succeeds: same states, proprio and
    privileged states at every chunk.

    Its own module: a LIBERO env built and closed in a process changes what envs built later in it render, which
    `test_libero_env.py` compares with fresh envs; images are not compared here for the same reason (the rendering
    of a given state is the same code either way)."""
    from trl_vla.teachers.scripted_libero import plan_actions

    suite, task = "libero_goal", 7  # turn on the stove: contacts with an articulated fixture
    np.random.seed(1)  # the fixture placement drawn when the model is built: the same scene for both
    fused = LiberoEnv(suite, task, image_size=64)
    np.random.seed(1)
    stock = LiberoEnv(suite, task, image_size=64)
    del stock.sim_env.sim.step, stock.sim_env.sim.forward, stock.sim_env.env._pre_action  # robosuite's methods
    _, info = fused.reset(options={"init_state_id": 0})
    stock.reset(options={"init_state_id": 0})
    for _ in range(40):
        chunk = plan_actions(info["privileged_state"], 8)  # the expert's own chunk of 8
        obs, _, done, _, info = fused.step(chunk)
        stock_obs, _, stock_done, _, stock_info = stock.step(chunk)
        np.testing.assert_array_equal(fused.sim_env.sim.data.qpos, stock.sim_env.sim.data.qpos)
        np.testing.assert_array_equal(fused.sim_env.sim.data.qvel, stock.sim_env.sim.data.qvel)
        np.testing.assert_array_equal(obs["proprio"], stock_obs["proprio"])
        for key, value in info["privileged_state"].items():
            np.testing.assert_array_equal(value, stock_info["privileged_state"][key], err_msg=key)
        assert done == stock_done
        if done:
            break
    assert done  # the knob was turned: the comparison went through the contacts
    fused.close()
    stock.close()
