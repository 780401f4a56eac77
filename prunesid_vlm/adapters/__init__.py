"""One adapter per model family (LLaVA-1.5, LLaVA-NeXT, LLaVA-NeXT-Video) behind the
:class:`~prunesid_vlm.adapters.base.Adapter` protocol; :func:`adapter_for` picks one."""
