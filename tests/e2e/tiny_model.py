"""Build a tiny random Llama model and LoRA adapters for it, for end-to-end tests.

No model can be downloaded on the test machines, so the tests make one on the spot.
Run with the vLLM venv's python (it needs torch, transformers, tokenizers, safetensors):

    python tiny_model.py model OUT_DIR
    python tiny_model.py adapter BASE_DIR OUT_DIR [--seed N]

Both are deterministic (fixed seeds) and take a few seconds. Each writes into a
temporary sibling directory and renames it into place at the end, with a stamp file
written last, so OUT_DIR is either absent, empty, or complete; a complete OUT_DIR
built with the same parameters is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

# Bump when the output of a command changes, so stale builds are rebuilt.
BUILDER_VERSION = 1
STAMP_NAME = "tiny_model_stamp.json"

VOCAB_SIZE = 512
HIDDEN_SIZE = 128
# head_dim = 128 / 2 = 64: vLLM's CPU attention kernels reject small head sizes such
# as 16 ("Unsupported CPU attention configuration") at the first request, not at load.
NUM_HEADS = 2
NUM_LAYERS = 2
INTERMEDIATE_SIZE = 256
MAX_POSITIONS = 512
MODEL_SEED = 0

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, in this order

LORA_RANK = 8
LORA_ALPHA = 16
LORA_TARGETS = ["q_proj", "v_proj"]


# ---------------------------------------------------------------- shared helpers


def _stamp(kind: str, **params: Any) -> dict[str, Any]:
    return {"builder_version": BUILDER_VERSION, "kind": kind, **params}


def _is_complete(out_dir: Path, stamp: dict[str, Any]) -> bool:
    """True when out_dir holds a finished build made with exactly these parameters."""
    try:
        return bool(json.loads((out_dir / STAMP_NAME).read_text()) == stamp)
    except (OSError, ValueError):
        return False


def _publish(tmp_dir: Path, out_dir: Path, stamp: dict[str, Any]) -> None:
    """Write the stamp last, then move the finished build into place."""
    for f in tmp_dir.iterdir():
        f.chmod(0o644)  # some writers create 0600 files; see _tmp_sibling
    (tmp_dir / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
    if out_dir.exists():
        if any(out_dir.iterdir()):
            # Either a build with other parameters or somebody else's directory:
            # both too risky to delete on our own.
            shutil.rmtree(tmp_dir)
            raise SystemExit(f"{out_dir} exists, is not empty and is not this build; remove it first")
        out_dir.rmdir()
    os.replace(tmp_dir, out_dir)


def _tmp_sibling(out_dir: Path) -> Path:
    # Same parent as out_dir, so the final rename stays on one filesystem.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    # mkdtemp makes it 0700; an engine running as another user (a container sharing
    # the volume) must still be able to read the model.
    tmp.chmod(0o755)
    return tmp


# ---------------------------------------------------------------- base model


def _corpus(n_sentences: int = 4000, seed: int = MODEL_SEED) -> list[str]:
    """Generated English-like sentences: enough variety for 250-odd BPE merges."""
    rng = random.Random(seed)
    subjects = [
        "the cat",
        "a dog",
        "my friend",
        "the engine",
        "our server",
        "this model",
        "the operator",
        "a user",
        "the sidecar",
        "every pod",
        "the scheduler",
        "she",
        "he",
    ]
    verbs = [
        "loads",
        "serves",
        "watches",
        "reads",
        "writes",
        "restarts",
        "measures",
        "likes",
        "sends",
        "receives",
        "counts",
        "answers",
        "forgets",
        "keeps",
    ]
    objects = [
        "the adapter",
        "a request",
        "some tokens",
        "the metrics",
        "a small file",
        "the queue",
        "many prompts",
        "the cache",
        "a new port",
        "the weights",
        "hello world",
        "the logs",
        "three numbers",
        "a long answer",
    ]
    endings = [".", "!", "?", " today.", " again.", " quickly.", " at night.", " on time."]
    sentences = []
    for _ in range(n_sentences):
        s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(endings)}"
        if rng.random() < 0.3:
            s += f" It took {rng.randint(0, 999)} ms."
        sentences.append(s[0].upper() + s[1:])
    return sentences


# The heavy imports live inside the functions: they exist only in the vLLM venv (hence
# the type: ignore for mypy in the project venv), and the skip paths should not pay for them.


def _build_tokenizer(out_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # type: ignore[import-not-found,unused-ignore]
    from transformers import PreTrainedTokenizerFast  # type: ignore[import-not-found,unused-ignore]

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        # Every byte is in the vocabulary, so any prompt encodes without <unk>.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    # Llama-style: prepend <s> to every encoded prompt.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=MAX_POSITIONS,
    )
    fast.save_pretrained(out_dir)


def _build_weights(out_dir: Path) -> None:
    import torch  # type: ignore[import-not-found,unused-ignore]
    from transformers import LlamaConfig, LlamaForCausalLM  # type: ignore[import-not-found,unused-ignore]

    torch.manual_seed(MODEL_SEED)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        unk_token_id=SPECIAL_TOKENS.index("<unk>"),
        bos_token_id=SPECIAL_TOKENS.index("<s>"),
        eos_token_id=SPECIAL_TOKENS.index("</s>"),
        pad_token_id=SPECIAL_TOKENS.index("<pad>"),
        tie_word_embeddings=False,
    )
    config.dtype = torch.float32  # transformers 5 name (was torch_dtype)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(out_dir, safe_serialization=True)


def build_model(out_dir: Path) -> Path:
    stamp = _stamp("model", vocab=VOCAB_SIZE, hidden=HIDDEN_SIZE, heads=NUM_HEADS, layers=NUM_LAYERS, seed=MODEL_SEED)
    if _is_complete(out_dir, stamp):
        return out_dir
    tmp = _tmp_sibling(out_dir)
    try:
        _build_tokenizer(tmp)
        _build_weights(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, out_dir, stamp)
    return out_dir


# ---------------------------------------------------------------- LoRA adapter


def _adapter_shapes(base_config: dict[str, Any]) -> dict[str, int]:
    """Output width of each LoRA target projection, read from the base model's config."""
    hidden = base_config["hidden_size"]
    heads = base_config["num_attention_heads"]
    kv_heads = base_config.get("num_key_value_heads", heads)
    head_dim = base_config.get("head_dim") or hidden // heads
    return {"q_proj": heads * head_dim, "v_proj": kv_heads * head_dim}


def _adapter_config(base_dir: Path) -> dict[str, Any]:
    # The usual PEFT fields; vLLM reads peft_type, r, lora_alpha and target_modules.
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_dir),
        "r": LORA_RANK,
        "lora_alpha": LORA_ALPHA,
        "lora_dropout": 0.0,
        "target_modules": LORA_TARGETS,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }


def build_adapter(base_dir: Path, out_dir: Path, seed: int) -> Path:
    base_dir = base_dir.resolve()
    stamp = _stamp("adapter", base=str(base_dir), r=LORA_RANK, seed=seed)
    if _is_complete(out_dir, stamp):
        return out_dir
    import torch  # type: ignore[import-not-found,unused-ignore]
    from safetensors.torch import save_file  # type: ignore[import-not-found,unused-ignore]

    base_config = json.loads((base_dir / "config.json").read_text())
    hidden = base_config["hidden_size"]
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(base_config["num_hidden_layers"]):
        for module, out_features in _adapter_shapes(base_config).items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            # Both matrices nonzero (PEFT would start B at zero), so the adapter really
            # changes the output and different seeds give different adapters.
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(LORA_RANK, hidden, generator=gen) * 0.1
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, LORA_RANK, generator=gen) * 0.1

    tmp = _tmp_sibling(out_dir)
    try:
        (tmp / "adapter_config.json").write_text(json.dumps(_adapter_config(base_dir), indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "adapter_model.safetensors"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, out_dir, stamp)
    return out_dir


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_model = sub.add_parser("model", help="build the tiny base model and tokenizer")
    p_model.add_argument("out_dir", type=Path)
    p_adapter = sub.add_parser("adapter", help="build a random LoRA adapter for a base model")
    p_adapter.add_argument("base_dir", type=Path)
    p_adapter.add_argument("out_dir", type=Path)
    p_adapter.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "model":
        out = build_model(args.out_dir)
    else:
        out = build_adapter(args.base_dir, args.out_dir, args.seed)
    print(out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
