"""Student rollouts in simulator worker processes: the environment pool, `collect_rollouts`, the trajectories.

```
prompts (suite, task_id, init_state_id, instruction)        one row per episode
  -> EnvPool: N persistent worker processes, one environment each (rebuilt only when the task changes)
  -> per decision step: ONE batched policy call for every environment waiting for an action,
     each environment runs the returned chunk open-loop and renders once at its end
     (pipelined: the environments are split in two halves; the policy decides for whichever half finished while
     the other half steps)
  -> RolloutBatch: per decision step the observation, token ids, log-probs, validity mask; per episode the outcome;
     `phase_times`: where the environments' time went (physics, controller, render, ..., ipc, idle)
```

Every episode samples from its own random stream (seeded from `seed`), so the tokens sampled for a fixed seed are the
same whatever the schedule (lockstep or pipelined) and the number of workers.

Faults: a worker that dies (segfault, killed), hangs past `step_timeout`, or whose simulation becomes invalid (NaN
state, MuJoCo instability) ends its episode as a *fault*, which is not a policy failure: `RolloutBatch.faults` flags
it and `stats()` counts it. A dead or hung worker is replaced by a fresh process; the other episodes go on. Errors that
are bugs (a malformed action, an unknown task) are raised in the caller with the worker's traceback.

Worker processes are started with the `spawn` method (no inherited threads, GPU or renderer state), so scripts that
build a pool need the usual `if __name__ == "__main__":` guard. Closing the pool (also on garbage collection and at
interpreter exit) stops every worker.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import signal
import struct
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .envs.base import PROMPT_COLUMNS, SimulationError


__all__ = [
    "EnvReply",
    "EnvPool",
    "RolloutBatch",
    "collect_rollouts",
    "make_env_pool",
    "save_video",
]

# ----------------------------------------------------------------------------------------------------------------------
# Worker processes
# ----------------------------------------------------------------------------------------------------------------------


def _is_simulation_fault(err: BaseException) -> bool:
    return isinstance(err, SimulationError) or type(err).__module__.split(".")[0] == "mujoco"


class _StepTimeout(BaseException):
    """An in-process command ran past `step_timeout` (a `BaseException`, so that no `except Exception` in the
    simulator's own code swallows it)."""


@contextlib.contextmanager
def _step_deadline(seconds: float):
    """Interrupt the block with `_StepTimeout` after `seconds` (SIGALRM): the in-process pool's equivalent of the
    worker pool's step timeout. Only the main thread receives signals (elsewhere the block runs unbounded), and Python
    handles a signal between bytecodes: a hang inside one C call is interrupted when that call returns."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise _StepTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _EnvHost:
    """Owns one environment (in a worker process, or in-process) and executes the pool's commands on it."""

    def __init__(self, env_factory: Callable[..., Any], env_kwargs: Mapping[str, Any]):
        self.env_factory = env_factory
        self.env_kwargs = dict(env_kwargs)
        self.env = None

    def execute(self, command: str, payload: Any) -> Any:
        if command == "reset":
            options = dict(payload)
            seed = options.pop("seed", None)
            if self.env is None:
                self.env = self.env_factory(options["suite"], options["task_id"], **self.env_kwargs)
            return self.env.reset(seed=seed, options=options)
        if command == "step":
            return self.env.step(payload)
        if command == "getattr":
            return None if self.env is None else getattr(self.env, payload)
        raise ValueError(f"Unknown worker command {command!r}.")

    def drop_env(self) -> None:
        """Forget an environment whose simulation can no longer be trusted (the next reset builds a new one)."""
        if self.env is not None:
            try:
                self.env.close()
            except Exception:  # a broken simulation may fail to close; it is discarded either way
                pass
            self.env = None


def _redirect_output(log_path: str) -> None:
    """Send this process's stdout and stderr, Python's and the C libraries' alike (MuJoCo, robosuite), to a file."""
    log = open(log_path, "a", buffering=1)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log


def _log_tail(log_path: str | None, lines: int = 40) -> str:
    """The last `lines` lines of a worker's log, to quote in an error (empty without a log)."""
    if log_path is None or not os.path.exists(log_path):
        return ""
    with open(log_path, errors="replace") as log:
        tail = collections.deque(log, maxlen=lines)
    return f"\nThe last lines of its log ({log_path}):\n" + "".join(tail)


def _worker_main(
    conn: mp.connection.Connection,
    env_factory: Callable[..., Any],
    env_kwargs: dict,
    single_render_thread: bool,
    log_path: str | None = None,
) -> None:
    """Entry point of a worker process: answer `(tag, command, payload)` messages with `_pack_reply`'s bytes until
    "close" or a closed pipe."""
    if log_path is not None:
        _redirect_output(log_path)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then closes the pool
    if single_render_thread:
        # Mesa's software renderer (llvmpipe) starts one rasterizer thread per core in every process; when the
        # workers already occupy the cores that only adds contention. 0 rasterizes in the rendering thread itself:
        # the same pixels, about 15% faster per frame than one rasterizer thread (75-88 ms against 90-100 ms for
        # LIBERO's 128x128 agent view here).
        os.environ.setdefault("LP_NUM_THREADS", "0")
    host = _EnvHost(env_factory, env_kwargs)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            tag, command, payload = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        if command == "close":
            break
        start = time.perf_counter()
        try:
            reply = ("ok", host.execute(command, payload))
        except Exception as err:
            if _is_simulation_fault(err):
                host.drop_env()
                reply = ("fault", f"{type(err).__name__}: {err}")
            else:
                reply = ("error", traceback.format_exc())
        try:
            conn.send_bytes(_pack_reply(tag, *reply, start))
        except (BrokenPipeError, OSError):
            break
    host.drop_env()
    conn.close()


_REPLY_TIMES = struct.Struct("ddd")
# Seconds a reply that has begun to arrive may still take to arrive in full, even past its command's `step_timeout`
# (a healthy worker writes the rest in milliseconds).
_REPLY_GRACE = 5.0


def _pack_reply(tag: int, kind: str, value: Any, started: float) -> bytes:
    """A worker's reply: when the command started, when it ended and when its reply was pickled (`perf_counter`,
    a system-wide monotonic clock, so the parent can compare them with its own), then the pickled
    `(tag, kind, value)`."""
    executed = time.perf_counter()
    body = pickle.dumps((tag, kind, value), protocol=pickle.HIGHEST_PROTOCOL)
    return _REPLY_TIMES.pack(started, executed, time.perf_counter()) + body


@dataclasses.dataclass
class EnvReply:
    """The outcome of one command on one environment: `ok` (with `value`, what the environment returned) or a fault
    (`fault=True`, `message` says why; the environment's episode cannot be continued).

    `seconds` is the time the command took in the environment's process, `ipc` the time its way between the
    processes took: the command's pickling and transfer until the worker started it, the reply's pickling, and its
    reading and unpickling here (not the time a finished reply waited to be read)."""

    value: Any = None
    fault: bool = False
    message: str = ""
    seconds: float = 0.0
    ipc: float = 0.0


@contextlib.contextmanager
def _main_module_not_reimported(ctx: Any, env_factory: Callable[..., Any]):
    """Let `spawn` start workers from a script read on stdin (`python - <<EOF`).

    A spawned child re-imports the parent's `__main__` from its file; for `<stdin>` there is none and the child dies
    with `FileNotFoundError: '<stdin>'`. The workers need nothing from `__main__` unless the env factory lives there,
    so the child is told there is no main file (as for `python -c` and notebooks), or the user is told what to do.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if ctx.get_start_method() == "fork" or path is None or os.path.exists(path):
        yield
        return
    if getattr(env_factory, "__module__", None) == "__main__":
        raise RuntimeError(
            f"The env factory {getattr(env_factory, '__qualname__', env_factory)!r} is defined in a script read from "
            f"{path}, which simulator workers (started with 'spawn') cannot import: save the script to a file, or "
            "define the factory in an importable module."
        )
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


class _Worker:
    def __init__(
        self,
        ctx: Any,
        env_factory: Callable[..., Any],
        env_kwargs: dict,
        single_render_thread: bool,
        log_path: str | None = None,
    ):
        self.log_path = log_path
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_worker_main,
            args=(child_conn, env_factory, env_kwargs, single_render_thread, log_path),
            daemon=True,
        )
        with _main_module_not_reimported(ctx, env_factory):
            self.process.start()
        child_conn.close()
        self.stopped = False

    def wait_ready(self, timeout: float) -> None:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"A simulator worker did not start within {timeout:.0f} s.")
        try:
            message, _ = self.conn.recv()
        except EOFError:
            self.process.join(timeout=5.0)
            where = _log_tail(self.log_path) or " See its output above."
            raise RuntimeError(f"A simulator worker failed while starting ({self.death_reason()}).{where}") from None
        if message != "ready":
            raise RuntimeError(f"Unexpected message from a starting simulator worker: {message!r}.")

    def recv_reply(self, seconds: float) -> bytes | None:
        """Read one reply; kill the worker and return None when the whole reply has not arrived within `seconds`.
        Raises `EOFError` or `OSError` when the worker died.

        A reply larger than the pipe's buffer (an observation's images) is written in pieces while it is read, and
        `recv_bytes` has no timeout: a worker that stops halfway through writing (frozen, stopped by a signal, swapped
        out) would block it forever. Killing the worker closes the pipe, which ends the read."""
        lock = threading.Lock()
        state = {"reading": True, "expired": False}

        def expire():
            with lock:
                if state["reading"]:
                    state["expired"] = True
                    self.process.kill()

        watchdog = threading.Timer(seconds, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            data = self.conn.recv_bytes()
        except (EOFError, OSError):
            if not state["expired"]:
                raise
        finally:
            with lock:
                state["reading"] = False
            watchdog.cancel()
        return None if state["expired"] else data

    @property
    def pid(self) -> int:
        return self.process.pid

    def death_reason(self) -> str:
        self.process.join(timeout=1.0)
        code = self.process.exitcode
        if code is None:
            return "the worker closed its pipe"
        if code < 0:
            return f"the worker was killed by {signal.Signals(-code).name}"
        return f"the worker exited with code {code}"

    def stop(self, graceful: bool = True) -> None:
        if self.stopped:
            return
        self.stopped = True
        if graceful and self.process.is_alive():
            try:
                self.conn.send((None, "close", None))
            except (BrokenPipeError, OSError):
                pass
            self.process.join(timeout=10.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=10.0)
        self.conn.close()
        self.process.close()


def _shutdown(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop()
    workers.clear()


class EnvPool:
    """Persistent simulator workers, one environment each, driven by `collect_rollouts`.

    Args:
        num_workers: Worker processes (= parallel environments). `0` runs one environment in this process (for
            debugging and profiling: no isolation from crashes, but the same step timeout, from the main thread).
        step_timeout: Seconds one command (a reset, which may rebuild the task, or one action chunk) may take before
            the worker is presumed hung, killed and replaced, and its episode reported as a fault. A reply that has
            begun to arrive gets at least 5 s more to arrive in full; a worker that stops halfway through it is hung.
        start_timeout: Seconds a (re)started worker may take to import its libraries.
        env_factory: `env_factory(suite, task_id, **env_kwargs)` builds an environment (default: `LiberoEnv`). It
            must be picklable (a module-level function or a `functools.partial` of one). The environment must switch
            task on `reset(options={"suite", "task_id"})`.
        start_method: `multiprocessing` start method of the workers.
        log_dir: Where each worker writes its output (`worker-<k>.log`: the libraries' warnings and prints, appended
            across restarts) instead of the console; the last lines are quoted when a worker fails to start, and a
            restart's fault message names the log.
        **env_kwargs: Keyword arguments of every environment, e.g. `LiberoEnv`'s `image_size`, `wrist_camera`,
            `cheap_rendering`, `record_step_states`.

    Workers build their environment on the first reset and keep it across episodes and calls; use the pool as a
    context manager or call `close()`.
    """

    def __init__(
        self,
        num_workers: int = 2,
        step_timeout: float = 300.0,
        start_timeout: float = 300.0,
        env_factory: Callable[..., Any] | None = None,
        start_method: str = "spawn",
        log_dir: str | None = None,
        **env_kwargs: Any,
    ):
        if num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0 (0 runs the environment in-process), got {num_workers}.")
        if step_timeout <= 0 or start_timeout <= 0:
            raise ValueError("`step_timeout` and `start_timeout` must be positive.")
        if env_factory is None:
            from .envs.libero import LiberoEnv

            env_factory = LiberoEnv
        self.num_workers = num_workers
        self.log_dir = log_dir
        if log_dir is not None and num_workers > 0:
            os.makedirs(log_dir, exist_ok=True)
        self.step_timeout = step_timeout
        self.start_timeout = start_timeout
        self.num_restarts = 0
        self._tag = 0
        self._pending: dict[int, tuple[int, float, tuple[str, Any]]] = {}  # env index -> (tag, submitted at, command)
        self._settled: dict[int, EnvReply] = {}  # replies known at submit time (a worker that could not be reached)
        self._env_factory = env_factory
        self._env_kwargs = env_kwargs
        self._ctx = mp.get_context(start_method)
        self._workers: list[_Worker] = []
        self._local = _EnvHost(env_factory, self._env_kwargs) if num_workers == 0 else None
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)
        try:
            self._workers.extend(self._new_worker(index) for index in range(num_workers))
            for worker in self._workers:
                worker.wait_ready(start_timeout)
        except BaseException:
            self.close()
            raise

    @property
    def num_envs(self) -> int:
        """Environments stepped in parallel."""
        return max(self.num_workers, 1)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the workers (empty in-process)."""
        return [worker.pid for worker in self._workers]

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def run(self, commands: Mapping[int, tuple[str, Any]]) -> dict[int, EnvReply]:
        """Send `{env_index: (command, payload)}` (`"reset"` with options, `"step"` with actions) to the environments,
        wait for all of them (each at most `step_timeout` seconds) and return their replies: `submit` then
        `collect`.

        A worker that dies or times out is replaced and its reply is a fault. A worker exception that is not a
        simulation fault is raised here (after every other reply has been collected) with the worker's traceback.
        """
        self.submit(commands)
        return self.collect(commands)

    def submit(self, commands: Mapping[int, tuple[str, Any]]) -> None:
        """Send commands without waiting for them: the environments run them while the caller does other work (e.g.
        the policy's next decision for other environments); `collect` gets the replies. An environment takes one
        command at a time."""
        if self.closed:
            raise RuntimeError("The environment pool is closed.")
        busy = [index for index in commands if index in self._pending or index in self._settled]
        if busy:
            raise RuntimeError(f"Environments {busy} have a command whose reply was not collected yet.")
        for index, command in commands.items():
            if not 0 <= index < self.num_envs:
                raise IndexError(f"Environment index {index} is out of range for a pool of {self.num_envs}.")
            self._tag += 1
            submitted = time.perf_counter()
            if self._local is None:
                worker = self._workers[index]
                try:
                    worker.conn.send((self._tag, *command))
                except (BrokenPipeError, OSError):
                    self._settled[index] = self._restart(index, worker.death_reason())
                    continue
            self._pending[index] = (self._tag, submitted, command)

    def collect(self, indices: Collection[int]) -> dict[int, EnvReply]:
        """Wait for the replies of the commands `submit`ted to the environments `indices` (each at most
        `step_timeout` seconds after its submission) and return them; see `run` for faults and errors."""
        missing = [index for index in indices if index not in self._pending and index not in self._settled]
        if missing:
            raise RuntimeError(f"Environments {missing} have no command to collect.")
        replies = {index: self._settled.pop(index) for index in indices if index in self._settled}
        if self._local is not None:
            for index in indices:
                if index in self._pending:
                    replies[index] = self._run_local(self._pending.pop(index)[2])
            return replies

        pending = {self._workers[index].conn: index for index in indices if index in self._pending}
        try:
            errors = self._receive(pending, replies)
        finally:
            # Interrupted (Ctrl-C): forget the commands; their late replies carry old tags and are skipped.
            for index in pending.values():
                self._pending.pop(index, None)
        if errors:
            raise RuntimeError(f"A simulator worker raised an error:\n{errors[0]}")
        return replies

    def first_done(self, groups: Sequence[Collection[int]]) -> int:
        """Wait until every environment of one of `groups` (sets of environments with submitted commands) can be
        collected without waiting (it replied, died, or ran past `step_timeout`), and return that group's position
        in `groups` (the first one when several are)."""
        for group in groups:
            missing = [index for index in group if index not in self._pending and index not in self._settled]
            if missing:
                raise RuntimeError(f"Environments {missing} have no command to collect.")
        while True:
            now = time.perf_counter()
            waiting = {}
            for g, group in enumerate(groups):
                not_done = [index for index in group if not self._is_done(index, now)]
                if not not_done:
                    return g
                waiting.update({self._workers[index].conn: index for index in not_done})
            deadline = min(self._pending[index][1] for index in waiting.values()) + self.step_timeout
            mp.connection.wait(list(waiting), timeout=max(deadline - now, 0.0))

    def _is_done(self, index: int, now: float) -> bool:
        if index in self._settled or self._local is not None:
            return True  # the in-process environment runs its command when it is collected
        return self._workers[index].conn.poll() or now - self._pending[index][1] >= self.step_timeout

    def _receive(self, pending: dict[Any, int], replies: dict[int, EnvReply]) -> list[str]:
        """Receive the replies of the `pending` connections into `replies` (restarting workers that die or hang);
        return the tracebacks of worker errors."""
        errors: list[str] = []
        timed_out = f"no reply within step_timeout={self.step_timeout:.0f} s"
        while pending:
            deadline = min(self._pending[index][1] for index in pending.values()) + self.step_timeout
            ready = mp.connection.wait(list(pending), timeout=max(deadline - time.perf_counter(), 0.0))
            if not ready:
                now = time.perf_counter()
                for conn, index in list(pending.items()):
                    if now - self._pending[index][1] >= self.step_timeout:
                        del pending[conn], self._pending[index]
                        replies[index] = self._restart(index, timed_out)
                continue
            for conn in ready:
                index = pending[conn]
                tag, submitted, _ = self._pending[index]
                reading = time.perf_counter()
                worker = self._workers[index]
                try:
                    data = worker.recv_reply(max(submitted + self.step_timeout - reading, _REPLY_GRACE))
                    failure = None if data is not None else f"{timed_out} (it stopped halfway through its reply)"
                except (EOFError, OSError):
                    failure = worker.death_reason()
                if failure is not None:
                    del pending[conn], self._pending[index]
                    replies[index] = self._restart(index, failure)
                    continue
                started, executed, pickled = _REPLY_TIMES.unpack_from(data)
                reply_tag, kind, value = pickle.loads(memoryview(data)[_REPLY_TIMES.size :])
                if reply_tag != tag:  # left over from a command whose caller was interrupted
                    continue
                del pending[conn], self._pending[index]
                ipc = max(started - submitted, 0.0) + (pickled - executed) + (time.perf_counter() - reading)
                if kind == "ok":
                    replies[index] = EnvReply(value, seconds=executed - started, ipc=ipc)
                elif kind == "fault":
                    replies[index] = EnvReply(fault=True, message=value, seconds=executed - started, ipc=ipc)
                else:
                    errors.append(value)
        return errors

    def _run_local(self, command: tuple[str, Any]) -> EnvReply:
        start = time.perf_counter()
        try:
            with _step_deadline(self.step_timeout):
                value = self._local.execute(*command)
            return EnvReply(value, seconds=time.perf_counter() - start)
        except _StepTimeout:
            self._local.drop_env()  # interrupted mid-step: the simulation cannot be trusted
            return EnvReply(fault=True, message=f"no reply within step_timeout={self.step_timeout:.0f} s")
        except Exception as err:
            if not _is_simulation_fault(err):
                raise
            self._local.drop_env()
            return EnvReply(fault=True, message=f"{type(err).__name__}: {err}")

    def _new_worker(self, index: int) -> _Worker:
        log_path = None if self.log_dir is None else os.path.join(self.log_dir, f"worker-{index}.log")
        return _Worker(
            self._ctx,
            self._env_factory,
            self._env_kwargs,
            single_render_thread=self.num_workers > 1,
            log_path=log_path,
        )

    def _restart(self, index: int, reason: str) -> EnvReply:
        log_path = self._workers[index].log_path
        self._workers[index].stop(graceful=False)
        self.num_restarts += 1
        worker = self._new_worker(index)
        self._workers[index] = worker
        worker.wait_ready(self.start_timeout)
        where = "" if log_path is None else f" (its log: {log_path})"
        return EnvReply(fault=True, message=f"{reason}{where}; worker restarted")

    def get_attr(self, name: str) -> list[Any]:
        """`getattr(env, name)` of every environment (`None` for an environment not built yet)."""
        if self._local is not None:
            return [getattr(self._local.env, name, None)]
        replies = self.run(dict.fromkeys(range(self.num_envs), ("getattr", name)))
        return [replies[i].value for i in range(self.num_envs)]

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        if self._local is not None:
            self._local.drop_env()
        self._finalizer()

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EnvPool(num_workers={self.num_workers}, env_kwargs={self._env_kwargs})"


def make_env_pool(num_workers: int = 2, **kwargs: Any) -> EnvPool:
    """The simulator pool the rollout trainers and `evaluate_policy` create: `EnvPool(num_workers, **kwargs)`."""
    return EnvPool(num_workers=num_workers, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Trajectories
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RolloutBatch:
    """The episodes of one `collect_rollouts` call, in prompt order (`E` episodes, at most `T` decisions each, `A`
    action tokens per decision).

    Per decision step (padded to `T`; `mask` says which steps were taken: steps after an episode ended are masked):
    `observations[e][t]` (the dict the policy acted on: uint8 `image` / `wrist_image`, `proprio`, `privileged_state`;
    with environments that record step states, also `chunk_privileged_states`, the states the chunk then went through),
    `token_ids` `[E, T, A]`, `log_probs` `[E, T, A]` (the student's, under the sampling temperature), `actions`
    `[E, T, chunk, dim]` (the robot actions the policy returned), `executed_actions` `[E, T]` int64 (how many actions
    of each chunk the simulator ran: fewer than `chunk` when the episode ended inside it or with `open_loop_steps`,
    0 when the simulator faulted on it).
    Per episode: `prompts[e]` (suite, task_id, init_state_id, instruction), `instructions[e]` (what the policy was
    given), `success`, `fault` (the simulator failed: not a policy failure) with `fault_messages`, `env_steps`,
    `final_observations[e]` (after the last chunk; `None` for a fault), `video_frames[e]` (every env step's agent
    view of the episodes recorded for video, else `None`).
    Timing (seconds): `wall_time` of the call; `policy_time` (the policy's calls) and `env_time` (waiting for
    environments), both in the calling process; `phase_times`, where the environments' time went, summed over
    environments so that the phases add up to `num_envs * wall_time`: the phases the environments report in
    `info["phase_times"]` (`LiberoEnv`: `physics`, `controller`, `observables`, `render`, `privileged_state`, ...),
    `other` (the rest of their commands' time in their processes), `ipc` (the commands' and replies' way between
    processes) and `idle` (no command to run: waiting for the policy, or for the other environments).
    """

    prompts: list[dict[str, Any]]
    instructions: list[str]
    observations: list[list[dict[str, Any]]]
    token_ids: torch.Tensor
    log_probs: torch.Tensor
    actions: np.ndarray
    executed_actions: torch.Tensor
    mask: torch.Tensor
    success: torch.Tensor
    fault: torch.Tensor
    fault_messages: list[str]
    env_steps: torch.Tensor
    final_observations: list[dict[str, Any] | None]
    video_frames: list[list[np.ndarray] | None] | None = None
    wall_time: float = 0.0
    policy_time: float = 0.0
    env_time: float = 0.0
    phase_times: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def num_episodes(self) -> int:
        return len(self.prompts)

    def num_decisions(self) -> torch.Tensor:
        """Decisions (policy calls) per episode, `[E]` int64."""
        return self.mask.sum(1)

    def steps(self, include_faults: bool = True) -> dict[str, Any]:
        """The valid decision steps, flattened episode by episode (`S` steps), ready for `policy.build_inputs`.

        Returns `observations` (list of `S` dicts), `instructions` (list of `S`), `token_ids` `[S, A]` int64,
        `log_probs` `[S, A]`, `action_mask` `[S, A]` bool (every token the policy produced: all True),
        `executed_mask` `[S, A]` bool (the tokens of the actions the simulator ran), `episode_index` and `step_index`
        `[S]` int64. `include_faults=False` leaves out the steps of faulted episodes (e.g. for rewards, which a fault
        makes meaningless).

        Which mask a loss wants depends on what it credits: a reward only says something about the actions that ran
        (GRPO uses `executed_mask`), while a teacher scores every token the student produced on a visited state
        (OPD uses `action_mask`).
        """
        keep = self.mask.clone()
        if not include_faults:
            keep &= ~self.fault.unsqueeze(1)
        episode_index, step_index = keep.nonzero(as_tuple=True)
        return {
            "observations": [self.observations[e][t] for e, t in zip(episode_index.tolist(), step_index.tolist())],
            "instructions": [self.instructions[e] for e in episode_index.tolist()],
            "token_ids": self.token_ids[keep],
            "log_probs": self.log_probs[keep],
            "action_mask": torch.ones(len(episode_index), self.token_ids.shape[-1], dtype=torch.bool),
            "executed_mask": self._executed_token_mask(self.executed_actions[keep]),
            "episode_index": episode_index,
            "step_index": step_index,
        }

    def _executed_token_mask(self, executed: torch.Tensor) -> torch.Tensor:
        # Tokens are laid out action by action (`chunk` actions of `A / chunk` tokens each).
        chunk = self.actions.shape[2]
        per_action = self.token_ids.shape[-1] // chunk
        action_of_token = torch.arange(self.token_ids.shape[-1]) // per_action
        return action_of_token.unsqueeze(0) < executed.unsqueeze(1)

    def frames(self, episode: int, key: str = "image") -> np.ndarray:
        """The camera frames of an episode, `[N, H, W, 3]` uint8: for an episode in `collect_rollouts`'s
        `video_episodes`, the agent view at the reset and after every env step; otherwise one per decision, then the
        final observation."""
        recorded = self.video_frames[episode] if self.video_frames is not None else None
        if recorded and key == "image":
            return np.stack(recorded)
        observations = list(self.observations[episode])
        if self.final_observations[episode] is not None:
            observations.append(self.final_observations[episode])
        if not observations:
            raise ValueError(f"Episode {episode} has no frames (it faulted before its first observation).")
        return np.stack([obs[key] for obs in observations])

    def stats(self) -> dict[str, float]:
        """Summary statistics: `num_episodes`, `successes`, `success_rate` (over the episodes without a fault),
        `faults`, `env_steps`, `mean_length`, `decisions`, `wall_time`, `policy_time`, `env_time` and
        `env_steps_per_second` (environment steps over wall time)."""
        ok = ~self.fault
        env_steps = int(self.env_steps.sum())
        return {
            "num_episodes": self.num_episodes,
            "successes": int(self.success.sum()),
            "success_rate": float(self.success[ok].float().mean()) if ok.any() else 0.0,
            "faults": int(self.fault.sum()),
            "env_steps": env_steps,
            "mean_length": env_steps / max(self.num_episodes, 1),
            "decisions": int(self.mask.sum()),
            "wall_time": self.wall_time,
            "policy_time": self.policy_time,
            "env_time": self.env_time,
            "env_steps_per_second": env_steps / self.wall_time if self.wall_time > 0 else 0.0,
        }


def save_video(frames: Sequence[np.ndarray] | np.ndarray | Sequence[Mapping[str, Any]], path: str, fps: float = 10.0):
    """Write frames to an mp4 file with imageio (ffmpeg).

    `frames` is an array `[N, H, W, 3]` uint8 (e.g. `RolloutBatch.frames(e)`), a list of such images, or a list of
    observation dicts (a trajectory; `image` and `wrist_image`, when present, side by side).
    """
    import imageio.v2 as imageio

    frames = list(frames)
    if not frames:
        raise ValueError("No frames to write.")
    if isinstance(frames[0], Mapping):
        frames = [
            np.concatenate([obs["image"]] + ([obs["wrist_image"]] if "wrist_image" in obs else []), 1)
            for obs in frames
        ]
    frames = [np.asarray(frame) for frame in frames]
    if frames[0].ndim != 3 or frames[0].shape[-1] != 3 or frames[0].dtype != np.uint8:
        raise ValueError(f"Frames must be [H, W, 3] uint8 images, got {frames[0].shape} {frames[0].dtype}.")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # macro_block_size=1 keeps odd sizes as they are instead of resizing them with a warning.
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(frame)


# ----------------------------------------------------------------------------------------------------------------------
# Collecting rollouts
# ----------------------------------------------------------------------------------------------------------------------


class _Episode:
    def __init__(self, prompt: dict[str, Any]):
        self.prompt = prompt
        self.instruction = prompt["instruction"]
        self.observations: list[dict[str, Any]] = []
        self.token_ids: list[torch.Tensor] = []
        self.log_probs: list[torch.Tensor] = []
        self.actions: list[np.ndarray] = []
        self.executed_actions: list[int] = []
        self.env_steps = 0
        self.success = False
        self.fault = ""
        self.final_observation: dict[str, Any] | None = None
        self.video_frames: list[np.ndarray] | None = None  # every env step's frame, for episodes recorded for video
        self.generator: torch.Generator | None = None  # the episode's random stream (sampling only)


_TEACHER_INFO_KEYS = ("privileged_state", "lookahead_actions")


def _observation(obs: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """The observation a decision is made on, with what a privileged teacher scores it from (`privileged_state`,
    and `lookahead_actions` from environments that simulate a policy ahead)."""
    return {**obs, **{key: info[key] for key in _TEACHER_INFO_KEYS if key in info}}


def _record_chunk_states(observation: dict[str, Any], step_states: Sequence[Mapping[str, np.ndarray]]) -> None:
    """Store, in the observation a chunk was decided on, the privileged states the chunk went through:
    `chunk_privileged_states[k]` is the state the chunk's action `k` was applied in, and the last entry the state after
    its last executed action (so `len - 1` actions ran; a fault leaves only the decision's own state)."""
    if "privileged_state" in observation:
        observation["chunk_privileged_states"] = [observation["privileged_state"], *step_states]


def _as_prompt_rows(prompts: Any) -> list[dict[str, Any]]:
    columns = getattr(prompts, "column_names", None)
    if columns is not None:
        missing = [c for c in PROMPT_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"The prompts lack the columns {missing} (they have {columns}); build them with "
                "`trl_vla.envs.libero.make_prompts(suite)`."
            )
    rows = [dict(row) for row in prompts]
    for i, row in enumerate(rows):
        missing = [c for c in PROMPT_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"Prompt {i} lacks {missing}; every prompt needs {list(PROMPT_COLUMNS)}.")
    if not rows:
        raise ValueError("No prompts to roll out.")
    return rows


def _policy_device(policy: Any) -> torch.device:
    device = getattr(policy, "device", None)
    if device is None:
        device = getattr(getattr(policy, "model", None), "device", "cpu")
    return torch.device(device)


def _episode_seeds(num_episodes: int, seed: int | None, generator: torch.Generator | None) -> list[int]:
    """One seed per episode for its random stream: from `seed`, else drawn from `generator` (else torch's default
    generator), mixed with the episode index by numpy's `SeedSequence`."""
    if seed is None:
        device = generator.device if generator is not None else "cpu"
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device))
    return [int(np.random.SeedSequence([seed, e]).generate_state(1, np.uint64)[0]) for e in range(num_episodes)]


def collect_rollouts(
    policy: Any,
    envs: EnvPool,
    prompts: Any,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    max_episode_steps: int | None = None,
    open_loop_steps: int | None = None,
    progress: bool = True,
    video_episodes: Collection[int] = (),
    pipeline: bool = True,
) -> RolloutBatch:
    """Run one episode per prompt with `policy` acting in the pool's environments.

    Each decision step makes ONE batched policy call for every environment waiting for an action
    (`policy.build_inputs(observations, instructions)`, then `policy.sample_actions(inputs, temperature, generator)`);
    each environment runs its chunk open-loop. Environments that finish an episode start the next queued prompt
    (preferring one of the task they already hold, which avoids rebuilding the simulator).

    Args:
        policy: Anything with the policy contract (`trl_vla.policy`).
        envs: A `EnvPool` (or `make_env_pool(...)`).
        prompts: A `datasets.Dataset` (or list of dicts) with columns `suite`, `task_id`, `init_state_id`,
            `instruction`; repeat rows for several episodes per prompt.
        temperature: Sampling temperature (0 = greedy).
        generator: Random generator (on the policy's device) that the episodes' random streams are drawn from.
        seed: Seeds the episodes' random streams when no `generator` is given, and each episode's
            `reset(seed=seed + e)`.
        max_episode_steps: Cap on environment steps per episode, on top of the environment's own limit.
        open_loop_steps: Actions of each chunk to execute before the next decision (default: the whole chunk).
        progress: Show a tqdm progress bar.
        video_episodes: Episodes (prompt indices) rendered at every env step, so that `RolloutBatch.frames` gives a
            frame per step for their videos (the others are rendered only at decisions: about 160 ms a frame here).
        pipeline: Overlap the policy with the simulators: the environments are split into two halves, and the policy
            decides for whichever half finished its chunks first while the other half keeps stepping
            (`pipeline=False`: lockstep, one policy call for all environments, then all of them step). Ignored with
            one environment. What is sampled does not depend on the schedule: every episode samples from its own
            random stream (seeded from `seed` or drawn from `generator`), so for a fixed seed the pipelined and the
            lockstep schedules, and any number of workers, sample the same tokens (up to the floating-point
            differences of policy batches of other sizes).

    Returns:
        A `RolloutBatch`, episodes in prompt order; `phase_times` says where the environments' time went.
    """
    rows = _as_prompt_rows(prompts)
    if max_episode_steps is not None and max_episode_steps < 1:
        raise ValueError(f"`max_episode_steps` must be positive, got {max_episode_steps}.")
    if open_loop_steps is not None and open_loop_steps < 1:
        raise ValueError(f"`open_loop_steps` must be positive, got {open_loop_steps}.")
    start = time.perf_counter()
    schedule = _Schedule(rows, envs.num_envs, seed, max_episode_steps, open_loop_steps, video_episodes, progress)
    if temperature > 0:
        schedule.seed_episodes(_episode_seeds(len(rows), seed, generator), _policy_device(policy))
    halves = 2 if pipeline and envs.num_envs > 1 else 1
    groups = [range(g * envs.num_envs // halves, (g + 1) * envs.num_envs // halves) for g in range(halves)]
    in_flight: dict[int, dict[int, tuple[str, Any]]] = {}  # group -> the commands its environments are running
    policy_time = env_time = 0.0

    def start_group(g: int) -> None:
        # The next commands of group g: resets for its free environments, one policy call for its waiting ones.
        nonlocal policy_time
        commands = schedule.resets(groups[g])
        if any(i in schedule.waiting for i in groups[g]):
            tic = time.perf_counter()
            commands.update(schedule.decide(policy, temperature, groups[g]))
            policy_time += time.perf_counter() - tic
        if commands:
            envs.submit(commands)
            in_flight[g] = commands

    try:
        for g in range(halves):
            start_group(g)
        while in_flight:
            # Whichever group finishes first is decided for next, while the other one keeps stepping.
            tic = time.perf_counter()
            g = list(in_flight)[envs.first_done(list(in_flight.values()))]
            replies = envs.collect(in_flight[g])
            env_time += time.perf_counter() - tic
            schedule.record(in_flight.pop(g), replies)
            start_group(g)
    finally:
        for commands in in_flight.values():  # an error stopped the loop: wait for the commands still running
            with contextlib.suppress(Exception):
                envs.collect(commands)
        schedule.close()
    wall_time = time.perf_counter() - start
    phase_times = dict(schedule.phase_times)
    phase_times["idle"] = max(envs.num_envs * wall_time - schedule.busy_time, 0.0)
    return _batch(schedule.episodes, policy, wall_time, policy_time, env_time, phase_times)


class _Schedule:
    """The bookkeeping of `collect_rollouts`: which episode runs on which environment, the observations waiting for a
    decision, and what each reply adds to its episode. `collect_rollouts` alternates `resets` + `decide` (the commands
    of one round) with the pool's `run` and `record`."""

    def __init__(self, rows, num_envs, seed, max_episode_steps, open_loop_steps, video_episodes, progress):
        from tqdm.auto import tqdm

        self.rows, self.num_envs, self.seed = rows, num_envs, seed
        self.max_episode_steps = max_episode_steps
        self.open_loop_steps = open_loop_steps
        self.video_episodes = video_episodes
        self.episodes = [_Episode(row) for row in rows]
        self.queue = collections.deque(range(len(rows)))
        self.current: dict[int, int] = {}  # env index -> episode running on it
        self.last_task: dict[int, tuple[str, int]] = {}  # env index -> the task it holds
        self.waiting: dict[int, dict[str, Any]] = {}  # env index -> observation awaiting a decision
        self.phase_times: collections.Counter[str] = collections.Counter()  # seconds, summed over environments
        self.busy_time = 0.0  # seconds the environments had a command (summed over environments)
        self.num_done = self.num_success = 0
        self.bar = tqdm(total=len(rows), desc="rollouts", unit="episode", disable=not progress, dynamic_ncols=True)

    @property
    def running(self) -> bool:
        return bool(self.queue or self.current)

    def close(self) -> None:
        self.bar.close()

    def resets(self, env_indices: Sequence[int]) -> dict[int, tuple[str, Any]]:
        """Reset commands that start the next queued episodes on the free environments among `env_indices`."""
        commands = {}
        for env_index in env_indices:
            if env_index not in self.current and self.queue:
                e = self._next_episode(env_index)
                self.current[env_index] = e
                row = self.rows[e]
                self.last_task[env_index] = (row["suite"], row["task_id"])
                options = {"suite": row["suite"], "task_id": row["task_id"], "init_state_id": row["init_state_id"]}
                if self.seed is not None:
                    options["seed"] = self.seed + e
                if e in self.video_episodes:
                    options["record_frames"] = True
                commands[env_index] = ("reset", options)
        return commands

    def _next_episode(self, env_index: int) -> int:
        # Keep an environment on the task it holds; give one without a task a task no other environment holds.
        task = self.last_task.get(env_index)
        held = set(self.last_task.values())
        for position, e in enumerate(self.queue):
            candidate = (self.rows[e]["suite"], self.rows[e]["task_id"])
            if candidate == task or (task is None and candidate not in held):
                del self.queue[position]
                return e
        return self.queue.popleft()

    def seed_episodes(self, seeds: Sequence[int], device: torch.device) -> None:
        """Give every episode its own random generator (on the policy's `device`), seeded with `seeds[e]`."""
        for episode, episode_seed in zip(self.episodes, seeds):
            episode.generator = torch.Generator(device).manual_seed(episode_seed)

    def decide(self, policy: Any, temperature: float, env_indices: Collection[int]) -> dict[int, tuple[str, Any]]:
        """One batched policy call for the waiting environments among `env_indices`; returns their step commands."""
        order = sorted(i for i in self.waiting if i in env_indices)
        observations = [self.waiting[i] for i in order]
        instructions = [self.episodes[self.current[i]].instruction for i in order]
        generators = [self.episodes[self.current[i]].generator for i in order]
        with torch.no_grad():
            inputs = policy.build_inputs(observations, instructions)
            token_ids, log_probs, actions = policy.sample_actions(
                inputs, temperature=temperature, generator=None if generators[0] is None else generators
            )
        token_ids, log_probs = token_ids.detach().cpu(), log_probs.detach().float().cpu()
        actions = np.asarray(actions, dtype=np.float32)
        commands = {}
        for row_index, env_index in enumerate(order):
            episode = self.episodes[self.current[env_index]]
            chunk = actions[row_index][: self.open_loop_steps]
            if self.max_episode_steps is not None:
                chunk = chunk[: self.max_episode_steps - episode.env_steps]
            episode.observations.append(observations[row_index])
            episode.token_ids.append(token_ids[row_index])
            episode.log_probs.append(log_probs[row_index])
            episode.actions.append(actions[row_index])
            commands[env_index] = ("step", chunk)
            del self.waiting[env_index]
        return commands

    def record(self, commands: dict[int, tuple[str, Any]], replies: dict[int, Any]) -> None:
        """Add each environment's reply to its episode: a fault or a finished episode frees the environment, any
        other observation waits for the next decision."""
        for env_index, reply in replies.items():
            episode = self.episodes[self.current[env_index]]
            kind = commands[env_index][0]
            self._record_times(reply)
            if reply.fault:
                episode.fault = reply.message or "simulator fault"
                if kind == "step":
                    episode.executed_actions.append(0)
                    _record_chunk_states(episode.observations[-1], [])
                self._finish(env_index)
            elif kind == "reset":
                obs, info = reply.value
                episode.instruction = info.get("instruction", episode.instruction)
                self.waiting[env_index] = _observation(obs, info)
                if self.current[env_index] in self.video_episodes:
                    episode.video_frames = [obs["image"]]
            else:
                self._record_step(env_index, episode, len(commands[env_index][1]), reply.value)

    def _record_times(self, reply: EnvReply) -> None:
        # The environment's own phases (`info["phase_times"]`, where it reports them); the rest of the command's time
        # in its process is "other", the rest of the round trip "ipc".
        info = reply.value[-1] if isinstance(reply.value, tuple) and reply.value else None
        phases = info.get("phase_times", {}) if isinstance(info, Mapping) else {}
        self.phase_times.update(phases)
        self.phase_times["other"] += max(reply.seconds - sum(phases.values()), 0.0)
        self.phase_times["ipc"] += reply.ipc
        self.busy_time += reply.seconds + reply.ipc

    def _record_step(self, env_index: int, episode: _Episode, chunk_length: int, value: tuple) -> None:
        obs, _, terminated, truncated, info = value
        executed = int(info.get("env_steps", chunk_length))
        episode.executed_actions.append(executed)
        if "step_privileged_states" in info:
            _record_chunk_states(episode.observations[-1], info["step_privileged_states"])
        if episode.video_frames is not None and "step_frames" in info:
            episode.video_frames.extend(info["step_frames"])
        episode.env_steps += executed
        episode.success = bool(info.get("success", terminated))
        capped = self.max_episode_steps is not None and episode.env_steps >= self.max_episode_steps
        if terminated or truncated or capped:
            episode.final_observation = _observation(obs, info)
            self._finish(env_index)
        else:
            self.waiting[env_index] = _observation(obs, info)

    def _finish(self, env_index: int) -> None:
        episode = self.episodes[self.current.pop(env_index)]
        self.num_done += 1
        self.num_success += episode.success and not episode.fault
        self.bar.update(1)
        self.bar.set_postfix(success=f"{self.num_success}/{self.num_done}")


def _batch(
    episodes: list[_Episode],
    policy: Any,
    wall_time: float,
    policy_time: float,
    env_time: float,
    phase_times: dict[str, float],
):
    space = policy.action_space
    horizon = max((len(e.token_ids) for e in episodes), default=0)
    shape = (len(episodes), horizon, space.num_action_tokens)
    token_ids = torch.zeros(shape, dtype=torch.long)
    log_probs = torch.zeros(shape, dtype=torch.float32)
    chunk_shape = next((e.actions[0].shape for e in episodes if e.actions), (space.chunk_size, space.action_dim))
    actions = np.zeros((len(episodes), horizon, *chunk_shape), np.float32)
    executed_actions = torch.zeros(shape[:2], dtype=torch.long)
    mask = torch.zeros(shape[:2], dtype=torch.bool)
    for i, episode in enumerate(episodes):
        n = len(episode.token_ids)
        if n:
            token_ids[i, :n] = torch.stack(episode.token_ids)
            log_probs[i, :n] = torch.stack(episode.log_probs)
            actions[i, :n] = np.stack(episode.actions)
            executed_actions[i, :n] = torch.tensor(episode.executed_actions, dtype=torch.long)
            mask[i, :n] = True
    return RolloutBatch(
        prompts=[e.prompt for e in episodes],
        instructions=[e.instruction for e in episodes],
        observations=[e.observations for e in episodes],
        token_ids=token_ids,
        log_probs=log_probs,
        actions=actions,
        executed_actions=executed_actions,
        mask=mask,
        success=torch.tensor([e.success and not e.fault for e in episodes], dtype=torch.bool),
        fault=torch.tensor([bool(e.fault) for e in episodes], dtype=torch.bool),
        fault_messages=[e.fault for e in episodes],
        env_steps=torch.tensor([e.env_steps for e in episodes], dtype=torch.long),
        final_observations=[e.final_observation for e in episodes],
        video_frames=[e.video_frames for e in episodes],
        wall_time=wall_time,
        policy_time=policy_time,
        env_time=env_time,
        phase_times=phase_times,
    )
