"""A tiny Llama with a word-level tokenizer, saved like any Hugging Face model (shared by tests)."""

from pathlib import Path

import numpy as np
import torch

WORDS = ("the cat sat on a mat while dogs ran in parks and birds sang over quiet hills "
         "time flies like an arrow fruit flies like a banana today tonight tomorrow").split()

PHRASES = ["the cat sat on a mat", "time flies like an arrow", "fruit flies like a banana",
           "dogs ran in parks", "birds sang over quiet hills", "today tonight tomorrow"]


def build_tiny(root: Path, layers: int = 2, docs: int = 400, train_steps: int = 0) -> Path:
    """Write root/model (Llama + tokenizer) and root/corpus.txt; returns root.

    train_steps > 0 fits it briefly to the corpus, so its predictions depend on its residual
    stream (a random init predicts nearly uniformly whatever the hidden state)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = np.random.default_rng(0)
    if train_steps:  # whole phrases, so the next word is predictable and the model can learn it
        text = [" ".join(rng.choice(PHRASES, size=rng.integers(2, 10))) for _ in range(docs)]
    else:
        text = [" ".join(rng.choice(WORDS, size=rng.integers(5, 60))) for _ in range(docs)]
    (root / "corpus.txt").write_text("\n\n".join(text))
    tk = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(text, trainers.WordLevelTrainer(special_tokens=["[UNK]", "<s>", "</s>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="[UNK]")
    cfg = LlamaConfig(vocab_size=tk.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(cfg)
    if train_steps:
        ids = torch.tensor(fast("\n".join(text))["input_ids"])
        opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
        for _ in range(train_steps):  # a few hundred Adam steps: a second or two
            starts = torch.randint(0, len(ids) - 33, (16,))
            batch = torch.stack([ids[s:s + 32] for s in starts])
            loss = lm(input_ids=batch, labels=batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    lm.save_pretrained(root / "model")
    fast.save_pretrained(root / "model")
    return root


def collect_tiny(root: Path, layer: int = 0, tokens: int = 3000, out: str = "s", *extra: str) -> Path:
    """`hsae collect` from the tiny model on its corpus (16-token contexts, float32); the store's path."""
    from hsae.cli import main

    assert main(["collect", "--model", str(root / "model"), "--layer", str(layer), "--corpus", str(root / "corpus.txt"),
                 "--out", str(root / out), "--ctx", "16", "--tokens", str(tokens), "--dtype", "float32", "--quiet",
                 *extra]) == 0
    return root / out


def train_tiny(store: Path, out: Path, levels: str = "4,8,16", l0: str = "2", batch_size: int = 128,
               *extra: str) -> Path:
    """A 60-step `hsae train` run on a tiny store; the run's path."""
    from hsae.cli import main

    assert main(["train", "--acts", str(store), "--out", str(out), "--levels", levels, "--l0", l0, "--steps", "60",
                 "--batch-size", str(batch_size), "--quiet", *extra]) == 0
    return out
