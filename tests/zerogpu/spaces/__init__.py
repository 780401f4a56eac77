"""A stand-in for Hugging Face's ``spaces`` package as it behaves on ZeroGPU, for CPU tests.

What it reproduces of ``spaces`` 0.51 (``spaces/zero/wrappers.py``) is what breaks apps there:

* every call of a ``@spaces.GPU`` function runs in a **process forked** from the caller, in a
  thread of its own (so a lock another thread held at the fork stays held there);
* its arguments go to that process and its result comes back **by pickle**: a lock, a model, a
  bound method of an object holding them, or a lambda fails as it fails there;
* whatever the call changes in memory stays in the forked process;
* ``gr.Error`` raised inside reaches the caller as itself, any other exception as
  "ZeroGPU worker error";
* ``duration`` may be a number or a callable of the call's arguments.

Unlike ZeroGPU it forks a fresh process per call (ZeroGPU may also reuse an idle worker). Each
call appends one JSON line to ``$ZEROGPU_STANDIN_LOG`` (when set): the function's name, the
duration asked, the pickled size of the arguments and of the result, and the seconds it took.
Off ZeroGPU (``SPACES_ZERO_GPU`` unset) ``GPU`` returns the function unchanged, as ``spaces`` does.
"""
from __future__ import annotations

import functools
import json
import multiprocessing
import os
import pickle
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

__version__ = "0.51.3+standin"

_FORK = multiprocessing.get_context("fork")
forked = False


def _zero_gpu() -> bool:
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def _log(entry: dict) -> None:
    path = os.environ.get("ZEROGPU_STANDIN_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def _worker(task, payload: bytes, conn) -> None:
    global forked
    forked = True
    try:
        args, kwargs = pickle.loads(payload)

        def run():
            return task(*args, **kwargs)

        with ThreadPoolExecutor(1) as pool:  # as spaces: the task runs in a thread of the worker
            value = pool.submit(run).result()
        try:
            conn.send_bytes(pickle.dumps(("ok", value)))
        except Exception as err:  # an unpicklable result fails as it does on ZeroGPU
            conn.send_bytes(pickle.dumps(("error", _describe(err))))
    except BaseException as err:  # noqa: BLE001 - reported to the caller
        conn.send_bytes(pickle.dumps(("error", _describe(err))))
    finally:
        conn.close()
        os._exit(0)


def _describe(err: BaseException):
    import gradio as gr

    if isinstance(err, gr.Error):
        return ("gradio", err)
    return ("other", type(err).__name__, "".join(traceback.format_exception(type(err), err, err.__traceback__)))


def _wrap(task, duration):
    @functools.wraps(task)
    def gradio_handler(*args, **kwargs):
        if forked:
            return task(*args, **kwargs)
        asked = duration(*args, **kwargs) if callable(duration) else duration
        payload = pickle.dumps((args, kwargs))  # PicklingError / TypeError here, as on ZeroGPU
        receive, send = _FORK.Pipe(duplex=False)
        start = time.perf_counter()
        process = _FORK.Process(target=_worker, args=(task, payload, send), daemon=True)
        process.start()
        send.close()
        try:
            message = receive.recv_bytes()
        except EOFError:
            message = pickle.dumps(("error", ("other", "EOFError", "the worker died")))
        finally:
            receive.close()
            process.join()
        outcome = pickle.loads(message)
        _log({"fn": getattr(task, "__name__", str(task)), "duration": asked, "args_bytes": len(payload),
              "result_bytes": len(message), "seconds": round(time.perf_counter() - start, 3),
              "ok": outcome[0] == "ok"})
        if outcome[0] == "ok":
            return outcome[1]
        import gradio as gr

        detail = outcome[1]
        if detail[0] == "gradio":
            raise detail[1]
        print(detail[2])  # spaces prints the worker's traceback
        raise gr.Error(f"ZeroGPU worker error: {detail[1]}", print_exception=False)

    gradio_handler.zerogpu = None
    return gradio_handler


def GPU(task=None, *, duration=None, size=None, **_kwargs):
    """``@spaces.GPU``, ``@spaces.GPU(duration=...)``: see the module docstring."""
    if task is not None and not callable(task):  # @spaces.GPU(45)
        duration, task = task, None
    if task is None:
        return lambda fn: GPU(fn, duration=duration, size=size)
    if not _zero_gpu():
        return task
    return _wrap(task, duration)


def gradio_auto_wrap(task):
    """Gradio calls this on every event on a Space; ``spaces`` wraps only with SPACES_GRADIO_AUTO_WRAP."""
    if os.environ.get("SPACES_GRADIO_AUTO_WRAP", "").lower() in ("1", "t", "true") and callable(task):
        return GPU(task)
    return task
