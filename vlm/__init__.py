"""vidmem: vlm -- Video LLMs behind one interface (LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, SmolVLM2).

Entry point: ``vlm.loader.load_model(name_or_path, device="auto", dtype="auto", cache_dir=None)``
returns a ``vlm.base.VideoLLM`` with ``encode``, ``answer``, ``build_prompt``/``build_inputs``,
``choice_logprobs``, ``probe_attention``, ``text_relevance``, ``layer0_state_dict``,
``input_embeddings`` and ``rotary_config``. Importing this package imports nothing heavy.
"""
