"""PruneSID Studio: see which visual tokens PruneSID keeps for LLaVA, and what it costs.

    python app.py            # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT to change)

Importing this module builds ``demo`` without loading a model (tests import it); the model
loads in a background thread at launch, or on first use. With no network, or no GPU for a
7B model, the app runs a tiny offline demo model and says so on the page.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

try:  # ZeroGPU: `spaces` must be imported before anything initialises CUDA
    import spaces  # noqa: F401
except ImportError:
    pass

from studio.layout import LAUNCH_KWARGS, QUEUE_KWARGS, build_demo  # noqa: E402
from studio.models import MANAGER  # noqa: E402

demo = build_demo()
demo.queue(**QUEUE_KWARGS)


def main() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for chatty in ("httpx", "httpcore", "urllib3"):  # one line per HTTP request otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), prevent_thread_lock=True,
                **LAUNCH_KWARGS)
    MANAGER.preload_in_background()  # after the page is up, so the first visitor isn't kept waiting
    demo.block_thread()


if __name__ == "__main__":
    main()
