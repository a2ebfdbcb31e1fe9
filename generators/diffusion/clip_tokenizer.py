"""A real CLIP tokenizer made from the BPE file mmsegmentation ships.

No Python package ships CLIP's `vocab.json`/`merges.txt`, and the hub is out of reach, but
`mmseg/utils/bpe_simple_vocab_16e6.txt.gz` is CLIP's BPE merge list. CLIP builds its 49,408-token
vocabulary from it as: the 256 byte symbols, the same with `</w>`, the first 48,894 merges, then
`<|startoftext|>` and `<|endoftext|>` (openai/CLIP `simple_tokenizer.py`). Written out in the
Hugging Face layout it loads with `CLIPTokenizer.from_pretrained(folder)`. (Building the tokenizer
from `vocab_file=`/`merges_file=` in transformers 5 silently yields a 2-token one; see DEPS.md.)
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from benchmark.errors import BenchError

N_MERGES = 49152 - 256 - 2  # CLIP keeps merges[1 : 49152 - 256 - 2 + 1]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def mmseg_bpe_file() -> Path:
    # find_spec, not import: `import mmseg.utils` needs compiled mmcv ops (see DEPS.md)
    spec = importlib.util.find_spec("mmseg")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("the tiny backbone's CLIP tokenizer is built from mmsegmentation's BPE file; "
                         "install mmsegmentation==1.2.2")
    path = Path(list(spec.submodule_search_locations)[0]) / "utils" / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise BenchError(f"{path} is missing; reinstall mmsegmentation==1.2.2")
    return path


def write_clip_tokenizer(folder: Path, bpe_file: Path | None = None) -> Path:
    """Write vocab.json, merges.txt and the configs of CLIP's tokenizer into `folder`."""
    lines = gzip.open(bpe_file or mmseg_bpe_file()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : N_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
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
