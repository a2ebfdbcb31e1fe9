"""The tiny backbone's tokenizer: CLIP's tokenizer class over a byte-level vocabulary the project writes.

The tiny text encoder is random, so real CLIP token ids carry no meaning for it; what the tiny
backbone must reproduce is the code path of a real one (SD v1): `CLIPTokenizer.from_pretrained`,
BOS/EOS and padding to 77 positions, lower-casing, placeholder tokens added for textual inversion.
A vocabulary of CLIP's 256 byte symbols, the same with the end-of-word mark `</w>`, and
`<|startoftext|>` / `<|endoftext|>` (514 tokens, no merges) does all of that, covers every input
string (each word becomes its characters), and needs no file from any other package (CLIP's
49,408-token merge list ships with no Python package we depend on for diffusion). Written in the
Hugging Face layout, so it loads like any tokenizer folder. (Building a CLIPTokenizer from
`vocab_file=` / `merges_file=` arguments in transformers 5 silently yields a 2-token tokenizer;
from_pretrained of a folder does not.)
"""

from __future__ import annotations

import json
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def byte_vocabulary() -> list[str]:
    symbols = list(bytes_to_unicode().values())
    return symbols + [s + "</w>" for s in symbols] + [BOS, EOS]


VOCAB_SIZE = 2 * 256 + 2
BOS_ID, EOS_ID = VOCAB_SIZE - 2, VOCAB_SIZE - 1


def write_clip_tokenizer(folder: Path) -> Path:
    """Write vocab.json, an empty merges.txt and the configs of the byte-level CLIP tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = byte_vocabulary()
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=1))
    return folder
