"""PruneSID Studio: see which visual tokens PruneSID keeps for LLaVA, and what it costs.

    python app.py            # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT to change)
    python app.py --model demo/tiny-qwen3-vl --port 7861    # python app.py --help: the options

Importing this module builds ``demo`` without loading a model (tests import it). Locally the
model loads in a background thread once the page is up (or on first use); on a Hugging Face
Space it loads before launch, in the main thread, as ZeroGPU requires (its GPU workers are forked
from this process and find the model placed there). With no network, or no GPU for a 7B model,
the app runs an offline demo model and says so on the page.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

if __name__ == "__main__":  # the options go to the environment before the app's modules read it
    import sys

    from prunesid_cli import apply_studio_options

    apply_studio_options(sys.argv[1:])

try:  # ZeroGPU: `spaces` must be imported before anything initialises CUDA
    import spaces  # noqa: F401
except ImportError:
    pass

import shutil  # noqa: E402

from studio.components import written_folder  # noqa: E402
from studio.guard import install as install_guard  # noqa: E402
from studio.layout import LAUNCH_KWARGS, QUEUE_KWARGS, build_demo  # noqa: E402
from studio.limits import limit_malloc_arenas  # noqa: E402
from prunesid_vlm.serving import MANAGER  # noqa: E402

demo = build_demo()
demo.queue(**QUEUE_KWARGS)
install_guard(demo)  # queue limits per session and per client address; jobs nobody listens to are skipped


def _stop(*_signal) -> None:
    raise KeyboardInterrupt  # SIGTERM (how a Space or a supervisor stops us): close down as on Ctrl-C


def main() -> None:
    import logging
    import signal

    signal.signal(signal.SIGTERM, _stop)
    limit_malloc_arenas()  # before the server's threads start: memory freed by one is reused by the others
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for chatty in ("httpx", "httpcore", "urllib3"):  # one line per HTTP request otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    hosted = bool(os.environ.get("SPACE_ID")) or os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
    if hosted:  # ZeroGPU: the model is loaded and placed at start-up, in the main thread
        MANAGER.prepare_now()
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), prevent_thread_lock=True,
                **LAUNCH_KWARGS)
    if not hosted:
        MANAGER.preload_in_background()  # after the page is up, so the first visitor isn't kept waiting
    try:
        demo.block_thread()
    finally:  # Gradio empties its own cache on the way out; the images written for the page go too
        shutil.rmtree(written_folder(), ignore_errors=True)


if __name__ == "__main__":
    main()
