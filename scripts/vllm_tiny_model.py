"""Writes a tiny Llama-architecture model with random weights and a byte-level BPE tokenizer
trained on the spot into DIR, for vLLM to serve with nothing downloaded (the tests' and the
benchmark's model). Run it with vLLM's Python, which has transformers and tokenizers:

    .vllm/bin/python scripts/vllm_tiny_model.py DIR [--layers N] [--hidden N]

Random weights generate random tokens; with `ignore_eos` a request produces exactly its
`max_tokens`, which is what a serving benchmark wants.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

VOCAB = 2048
# Training text for the tokenizer: any bytes will do; the model's outputs are random anyway.
CORPUS = [" ".join(f"w{i}x{j}" for j in range(64)) for i in range(256)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--max-position", type=int, default=2048)
    args = parser.parse_args()

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(itertools.chain(CORPUS, CORPUS), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.model_max_length = args.max_position
    fast.save_pretrained(args.directory)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 4,
        num_hidden_layers=args.layers,
        num_attention_heads=max(args.hidden // 64, 1),
        num_key_value_heads=max(args.hidden // 64, 1),
        max_position_embeddings=args.max_position,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(args.directory)
    print(f"wrote a {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M-parameter model to {args.directory}")


if __name__ == "__main__":
    main()
